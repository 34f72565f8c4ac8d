"""``autoseg find-best``: choose the best configuration or ensemble on the cross-validation."""

from __future__ import annotations

import argparse

from autoseg.paths import add_work_dir_argument, dataset_work_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="raw dataset folder (its working folder holds the trained models)")
    add_work_dir_argument(parser)
    parser.add_argument("--configs", nargs="+", required=True, metavar="CONFIG", help="trained configurations")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], metavar="K")
    parser.add_argument("--workers", type=int, default=2)


def run(args: argparse.Namespace) -> int:
    from autoseg.pipeline.selection import find_best, format_candidates
    from autoseg.utils.locking import folder_lock

    work = dataset_work_dir(args.work_dir, args.dataset)
    with folder_lock(work, create=False):
        recipe = find_best(work, args.configs, args.folds, workers=args.workers)
    print(format_candidates(recipe))
    print(f"wrote {work / 'inference.json'} and {work / 'postprocessing.json'}")
    return 0
