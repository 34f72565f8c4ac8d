"""``autoseg convert-msd SOURCE DESTINATION``: convert a Medical Segmentation Decathlon task into the raw layout."""

from __future__ import annotations

import argparse

from autoseg.data.msd import convert_msd


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="MSD task folder (dataset.json with 'modality' and 'training', imagesTr/)")
    parser.add_argument("destination", help="new raw dataset folder, e.g. Dataset004_Hippocampus (must not exist)")
    parser.add_argument("--workers", type=int, default=2, help="processes converting cases in parallel (default: 2)")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def run(args: argparse.Namespace) -> int:
    destination = convert_msd(args.source, args.destination, workers=args.workers, progress=not args.no_progress)
    print(f"Converted {args.source} into {destination}. Next: autoseg check {destination}")
    return 0
