"""``autoseg import-model``: verify a model archive and unpack it into a new folder."""

from __future__ import annotations

import argparse

from autoseg.sharing.model_archive import import_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("archive", help="a .zip written by `autoseg export-model`")
    parser.add_argument("destination", help="new (or empty) folder to unpack into; use it as -m for `autoseg predict`")


def run(args: argparse.Namespace) -> int:
    manifest = import_model(args.archive, args.destination)
    print(f"imported {len(manifest['files'])} verified files into {args.destination}")
    return 0
