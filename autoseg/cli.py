"""The ``autoseg`` command line: one subcommand per stage, each a thin layer over a library function.

Each subcommand lives in a module that defines ``add_arguments(parser)`` and ``run(args) -> int``. Modules are
imported only when their subcommand runs, so ``autoseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from autoseg import __version__
from autoseg.errors import UserError
from autoseg.utils.files import describe_file_system_error
from autoseg.utils.locking import note_command_line

# name -> one-line help, in the order of the pipeline. Command ``a-b`` lives in ``autoseg/commands/a_b.py``.
COMMANDS: dict[str, str] = {
    "demo": "generate the synthetic demo dataset and run every stage on it",
    "check": "verify a raw dataset and report every problem",
    "convert-msd": "convert a Medical Segmentation Decathlon task into the raw convention",
    "plan": "fingerprint a dataset and plan configurations fitted to a GPU-memory budget",
    "preprocess": "crop, normalise and resample training cases per configuration",
    "train": "train one fold of one configuration (resumable, time budgets, torchrun)",
    "train-adapter": "train the test-time appearance adapter of a trained model's folds (predict --adapt)",
    "predict": "segment a folder of images with a trained model",
    "evaluate": "compare predicted label maps with references: Dice, HD95, ASSD, NSD",
    "find-best": "pick the best configuration or ensemble on cross-validation",
    "run": "the whole pipeline: check, plan, preprocess, train, select, post-process, report",
    "overlay": "write a PNG of an image slice with its label map outlined in colour",
    "export-model": "write a trained model folder to a verified zip archive",
    "export-onnx": "write a trained model as verified ONNX networks for onnxruntime",
    "import-model": "verify a model archive and unpack it into a new folder",
}


def command_module(name: str) -> str:
    """The module of a subcommand: ``find-best`` -> ``autoseg.commands.find_best``."""
    return f"autoseg.commands.{name.replace('-', '_')}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoseg",
        description="Self-configuring medical image segmentation: point it at a raw dataset folder.",
    )
    parser.add_argument("--version", action="version", version=f"autoseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        subparser.set_defaults(_module=command_module(name))
        # Arguments are added lazily below only for the chosen command.
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in COMMANDS:
        module = importlib.import_module(command_module(command))
        subparser = parser._subparsers._group_actions[0].choices[command]
        module.add_arguments(subparser)
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(arguments._module)
    note_command_line(argv)  # the locks this command takes name it to a second command that is refused
    try:
        return int(module.run(arguments) or 0)
    except UserError as error:
        print(f"autoseg {arguments.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # A full disk, a read-only folder or a missing permission is the user's to fix, not a bug: one sentence.
        sentence = describe_file_system_error(error)
        if sentence is None:
            raise
        print(f"autoseg {arguments.command}: error: {sentence}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autoseg {arguments.command}: interrupted", file=sys.stderr)
        return 130
