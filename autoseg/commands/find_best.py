"""``autoseg find-best``: choose the best configuration or ensemble on the cross-validation."""

from __future__ import annotations

import argparse

from autoseg.commands.arguments import add_work_dir_argument
from autoseg.pipeline.selection import find_best, format_candidates
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.locking import folder_lock


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="raw dataset folder (its working folder holds the trained models)")
    add_work_dir_argument(parser)
    parser.add_argument("--configs", nargs="+", required=True, metavar="CONFIG", help="trained configurations")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], metavar="K")
    parser.add_argument("--workers", type=int, default=2)


def run(args: argparse.Namespace) -> int:
    work = WorkFolder.for_dataset(args.work_dir, args.dataset)
    with folder_lock(work, create=False):
        recipe = find_best(work, args.configs, args.folds, workers=args.workers)
    print(format_candidates(recipe))
    print(f"wrote {work.inference_recipe} and {work.postprocessing}")
    return 0
