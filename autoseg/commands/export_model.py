"""``autoseg export-model``: write a trained model folder to a verified zip archive."""

from __future__ import annotations

import argparse

from autoseg.sharing.model_archive import export_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_folder", help="the dataset's working folder (WORK/<dataset>) holding plans and models")
    parser.add_argument("archive", help="output .zip file")
    parser.add_argument("--checkpoint", default="final", choices=("final", "best", "latest"),
                        help="which checkpoint of each fold to include (default: final)")


def run(args: argparse.Namespace) -> int:
    manifest = export_model(args.model_folder, args.archive, checkpoint_name=args.checkpoint)
    print(f"wrote {args.archive}: {len(manifest['files'])} files, autoseg {manifest['versions']['autoseg']}")
    return 0
