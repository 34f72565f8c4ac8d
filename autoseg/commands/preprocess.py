"""``autoseg preprocess DATASET``: crop, normalise and resample every training case for the planned configurations."""

from __future__ import annotations

import argparse

from autoseg.commands.arguments import add_work_dir_argument
from autoseg.data.raw_folder import load_raw_dataset
from autoseg.preprocessing.preprocess_dataset import preprocess_dataset
from autoseg.records.case_signatures import require_unchanged_since_planning
from autoseg.records.plans import load_plans
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.locking import folder_lock
from autoseg.utils.parts import shard
from autoseg.utils.threads import available_cpus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="raw dataset folder (nnU-Net v2 layout)")
    parser.add_argument(
        "-c", "--configurations", nargs="+", default=None, metavar="CONFIG",
        help="configurations to preprocess (default: every planned one; 3d_cascade_fullres shares 3d_fullres data)",
    )
    add_work_dir_argument(parser)
    parser.add_argument(
        "--workers", type=int, default=available_cpus(),
        help="parallel processes, one case each at a time (default: the number of CPUs)",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo cases that are already preprocessed")
    parser.add_argument("--part-id", type=int, default=0,
                        help="which part of the sorted case list to do (0-based; parts may run at the same time)")
    parser.add_argument("--num-parts", type=int, default=1,
                        help="split the case list into this many parts (e.g. one per job of a SLURM array)")


def run(args: argparse.Namespace) -> int:
    dataset = load_raw_dataset(args.dataset)
    work_folder = WorkFolder.for_dataset(args.work_dir, dataset.root)
    shard([], part_id=args.part_id, num_parts=args.num_parts)  # refuse a bad part before taking the lock
    # The parts of a split run write disjoint files, so they hold the working folder's lock shared: they run side
    # by side (never waiting: locks do not wait) while `plan` or an unsplit `preprocess` (exclusive) is refused.
    with folder_lock(work_folder, shared=args.num_parts > 1, create=False):
        plans = load_plans(work_folder.plans)
        require_unchanged_since_planning(
            work_folder, dataset, how_to_proceed=f"run `autoseg plan {args.dataset}` again first (same --work-dir)."
        )
        summary = preprocess_dataset(
            dataset,
            plans=plans,
            work_folder=work_folder,
            configuration_names=args.configurations,
            workers=max(1, args.workers),
            overwrite=args.overwrite,
            part_id=args.part_id,
            num_parts=args.num_parts,
        )
    for name, counts in summary.get("configurations", {}).items():
        print(f"{name}: {counts['preprocessed']} case(s) preprocessed, {counts['skipped']} already done "
              f"-> {work_folder.preprocessed(name)}")
    return 0
