"""``autoseg export-onnx``: write a trained model's networks as verified ONNX graphs for onnxruntime deployment."""

from __future__ import annotations

import argparse

from autoseg.inference.onnx_export import ONNX_OPSET, export_onnx_model
from autoseg.utils.threads import set_torch_threads


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_folder", help="model folder: WORK/<dataset> or an imported model")
    parser.add_argument("output_folder", help="new (or empty) folder for the ONNX networks and their JSON records")
    parser.add_argument("-c", "--configuration", default=None,
                        help="configuration to export; default: the recipe of inference.json, else the only one")
    parser.add_argument("-f", "--folds", nargs="+", default=None,
                        help="folds to export (numbers or 'all'); default: the recipe's or every trained fold")
    parser.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX operator set (default {ONNX_OPSET})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every available CPU)")


def run(args: argparse.Namespace) -> int:

    set_torch_threads(args.threads)
    export = export_onnx_model(
        args.model_folder, args.output_folder, configuration=args.configuration, folds=args.folds,
        checkpoint=args.checkpoint, opset=args.opset,
    )
    for name, entry in export.configurations.items():
        worst = max(fold.max_abs_difference_to_torch for fold in entry.folds.values())
        print(f"autoseg export-onnx: {name} folds {', '.join(entry.folds)}: largest difference to torch "
              f"{worst:.2g} on a random batch")
    print(f"autoseg export-onnx: wrote {args.output_folder} (opset {export.opset}); predict with "
          f"`autoseg predict --engine onnx -m {args.output_folder} -i INPUT -o OUTPUT`")
    return 0
