"""`autoseg predict`: segment a folder of raw images (CASE_0000.ext, CASE_0001.ext, ...) with a trained model."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from autoseg.data.raw_folder import discover_cases
from autoseg.errors import UserError
from autoseg.inference.adaptation import ADAPTATION_METHODS
from autoseg.inference.ensemble import ModelEnsemble
from autoseg.inference.loading import load_ensemble
from autoseg.inference.model_source import ModelSource
from autoseg.inference.options import PredictionOptions
from autoseg.inference.quality_table import QUALITY_FILE, flagged_cases, read_quality_table
from autoseg.io.images import file_ending, read_image_header
from autoseg.records.dataset import Case, Problem
from autoseg.records.onnx_export import is_onnx_export
from autoseg.records.quality_model import QualityModel
from autoseg.sharing.submission import write_submission
from autoseg.utils.files import remove_stale_temporaries
from autoseg.utils.locking import folder_lock
from autoseg.utils.memory import describe_largest_case
from autoseg.utils.parts import shard
from autoseg.utils.precision import add_precision_argument, resolve_precision
from autoseg.utils.threads import available_cpus, set_torch_threads

# Label-map file types `--format` offers; each keeps the input's exact geometry.
OUTPUT_FORMATS = ("nii.gz", "nii", "nrrd", "mha", "seg.nrrd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True, help="folder of images named CASE_XXXX.ext (one per channel)")
    parser.add_argument("-o", "--output", required=True, help="folder for the label maps (CASE.ext)")
    parser.add_argument("-m", "--model", required=True, help="model folder: WORK/<dataset> or an imported model")
    parser.add_argument("--format", default=None, choices=OUTPUT_FORMATS, type=lambda value: value.lstrip("."),
                        help="file type of the label maps (default: the input images' own); seg.nrrd writes 3D "
                             "Slicer segmentations with the dataset's label names and colours (docs/viewing.md)")
    parser.add_argument("-c", "--configuration", default=None,
                        help="configuration (2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres); default: the "
                             "recommended or only trained one")
    parser.add_argument("-f", "--folds", nargs="+", default=None,
                        help="folds to ensemble (numbers or 'all'); default: every trained fold")
    parser.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final")
    parser.add_argument("--no-tta", action="store_true", help="disable test-time mirroring (about 8x faster in 3D)")
    parser.add_argument("--step-size", type=float, default=0.5,
                        help="sliding-window step as a fraction of the patch (default 0.5; larger is faster)")
    parser.add_argument("--no-postprocessing", action="store_true",
                        help="skip the post-processing chosen by model selection (postprocessing.json)")
    parser.add_argument("--save-probabilities", action="store_true", help="also write the class probabilities")
    parser.add_argument("--continue", dest="continue_", action="store_true",
                        help="skip cases whose output already exists")
    parser.add_argument("--part-id", type=int, default=0, help="which part of the sorted case list to do (0-based)")
    parser.add_argument("--num-parts", type=int, default=1, help="split the case list into this many parts")
    parser.add_argument("--device", default="auto", help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:1, mps")
    parser.add_argument("--workers", type=int, default=1,
                        help="background processes for preprocessing and export (0 = all in this process)")
    parser.add_argument("--batch-size", type=int, default=2, help="patches per forward pass")
    add_precision_argument(parser)
    parser.add_argument("--submission", default=None, metavar="NAME",
                        help="write a challenge submission: OUTPUT/NAME/ (one label map per case, named as the "
                             "input case), a manifest (model hash, folds, TTA, post-processing, seeds, versions) "
                             "and OUTPUT/NAME.zip")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the network (default: the CPUs not already busy, at least 1)")
    parser.add_argument("--adapt", nargs="?", const="standardise", default=None, choices=ADAPTATION_METHODS,
                        help="adapt every image's appearance to the training images before segmenting it "
                             "(default method: standardise, recorded by `autoseg run`; the others need `autoseg "
                             "train-adapter`); writes CASE.adaptation.json next to each label map "
                             "(docs/adaptation.md)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of test-time adaptation (default 0)")
    parser.add_argument("--flag-below", type=float, default=None, metavar="X",
                        help="flag cases whose expected Dice (quality.csv) is below X (default: the threshold "
                             "model selection chose on the cross-validation, in inference.json)")
    parser.add_argument("--no-quality", action="store_true",
                        help="skip the per-case quality estimate (quality.csv; docs/quality.md)")
    parser.add_argument("--engine", choices=("torch", "onnx"), default="torch",
                        help="torch: the checkpoints of a model folder; onnx: a folder written by `autoseg "
                             "export-onnx`, run by onnxruntime on the CPU in float32 (docs/inference.md)")


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs from /proc/stat, or None where it does not exist."""
    try:
        with open("/proc/stat", encoding="ascii") as stream:
            fields = [int(value) for value in stream.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def idle_cpu_count(*, sample_seconds: float = 0.25) -> int:
    """CPUs not busy right now (at least 1), from the CPU time used by all processes over ``sample_seconds``.

    OpenMP threads wait for each other at every operation; when another process holds one of the cores, a thread
    that is preempted stalls all the others: on a machine shared with other jobs all cores are slower than one, on an
    idle machine faster (measured: docs/inference.md).
    A short sample of /proc/stat sees the present; the 1-minute load average (the fallback) still counts jobs that
    ended a minute ago and made an idle machine use a single thread.
    """
    cpus = available_cpus()
    before = _cpu_times()
    if before is None:
        try:
            return max(1, min(cpus, cpus - round(os.getloadavg()[0])))
        except (AttributeError, OSError):  # pragma: no cover - not available on this platform
            return cpus
    time.sleep(sample_seconds)
    after = _cpu_times()
    busy_fraction = (after[0] - before[0]) / max(1, after[1] - before[1])
    machine_cpus = os.cpu_count() or cpus
    busy_cpus = busy_fraction * machine_cpus
    return max(1, min(cpus, machine_cpus - round(busy_cpus)))


def discover_input_cases(folder: Path, *, num_channels: int) -> list[Case]:
    """Group ``CASE_XXXX.ext`` files into cases sorted by identifier; raise ``UserError`` naming every misfit."""
    if not folder.is_dir():
        raise UserError(f"{folder}: input folder does not exist.")
    endings = {file_ending(entry) for entry in folder.iterdir() if entry.is_file() and not entry.name.startswith(".")}
    endings.discard(None)
    if not endings:
        raise UserError(f"{folder}: contains no image files.")
    if len(endings) > 1:
        raise UserError(f"{folder}: mixes file endings ({', '.join(sorted(endings))}); keep one kind per folder.")
    problems: list[Problem] = []
    cases = discover_cases(folder, endings.pop(), num_channels, problems, None)
    errors = [problem for problem in problems if problem.severity == "error"]
    if errors:
        listed = "; ".join(str(problem) for problem in errors[:5])
        raise UserError(f"{folder}: {len(errors)} input file problem(s): {listed}.")
    return sorted(cases, key=lambda case: case.identifier)


def run(args: argparse.Namespace) -> int:

    threads = set_torch_threads(args.threads or idle_cpu_count())
    if not 0 < args.step_size <= 1:
        raise UserError(f"--step-size must be in (0, 1], got {args.step_size}.")
    models = _load_models(args, threads=threads)
    first = models.members[0]
    input_folder = Path(args.input).expanduser().resolve()
    output_folder = Path(args.output).expanduser().resolve()
    if output_folder == input_folder:
        raise UserError(f"{output_folder}: the output folder must differ from the input folder.")
    cases = shard(discover_input_cases(input_folder, num_channels=first.dataset.num_channels),
                  part_id=args.part_id, num_parts=args.num_parts)
    output_folder = _prepare_output_folder(output_folder, args)
    chosen_ending = f".{args.format}" if args.format else None
    items = [
        (case.images, output_folder / (case.identifier + (chosen_ending or file_ending(case.images[0]))))
        for case in cases
    ]
    _announce(args, models, cases)
    # The parts of one sharded prediction (--part-id/--num-parts) write one folder together; any other is refused.
    # A submission folder holds exactly its label maps and manifest: its lock file lives in the -o folder above it.
    with folder_lock(output_folder.parent if args.submission else output_folder, shared=args.num_parts > 1):
        if args.num_parts == 1:  # alone in the folder: temporaries of a killed run are garbage, not live writes
            remove_stale_temporaries(output_folder)
        written = models.predict_files(
            [images for images, _ in items], [output for _, output in items],
            save_probabilities=args.save_probabilities, skip_existing=args.continue_, workers=args.workers,
            progress=True,
        )
        skipped = len(items) - len(written)
        print(f"autoseg predict: wrote {len(written)} label map(s) to {output_folder}"
              + (f" ({skipped} already there)" if skipped else ""))
        if first.options.quality:
            print(f"autoseg predict: {quality_summary(output_folder / QUALITY_FILE, models.quality, args.flag_below)}")
        if args.submission:
            _write_submission(output_folder, models, args, [output for _, output in items])
    return 0


def _load_models(args: argparse.Namespace, *, threads: int) -> ModelEnsemble:
    """The ensemble to run: checkpoints with torch, or an ``export-onnx`` folder with onnxruntime (``--engine``)."""
    options = PredictionOptions(
        tta=not args.no_tta, step_size=args.step_size, batch_size=args.batch_size, precision=args.precision,
        device=args.device, threads=threads, adapt=args.adapt, adaptation_seed=args.seed,
        # A submission folder holds exactly its label maps and manifest: no quality.csv there.
        quality=not args.no_quality and not args.submission, flag_below=args.flag_below,
    )
    if args.engine == "onnx":
        _refuse_torch_only_options(args)
        source = ModelSource.onnx_export(args.model, configuration=args.configuration, folds=args.folds,
                                         postprocessing=not args.no_postprocessing)
        return load_ensemble(source, options)
    if is_onnx_export(args.model):
        raise UserError(f"{args.model}: holds ONNX networks (from `autoseg export-onnx`); add --engine onnx.")
    if args.adapt and args.submission:
        raise UserError("--submission records the trained models only; drop --adapt to write a submission.")
    source = ModelSource.checkpoints(args.model, configuration=args.configuration, folds=args.folds,
                                     checkpoint=args.checkpoint, postprocessing=not args.no_postprocessing)
    return load_ensemble(source, options)


def quality_summary(table: Path, model: QualityModel | None, flag_below: float | None) -> str:
    """The line that ends a prediction: how many cases are flagged, the worst few, and where the table is."""
    rows = read_quality_table(table)
    threshold = flag_below if flag_below is not None else (model.flag_below if model is not None else None)
    if threshold is None:
        return (f"quality estimates of {len(rows)} case(s) in {table} (uncalibrated: run `autoseg find-best` for "
                f"expected Dice and a threshold, or pass --flag-below)")
    flagged = flagged_cases(rows)
    named = ", ".join(f"{row['case']} ({float(row['expected_dice']):.2f})" for row in flagged[:5])
    more = f" and {len(flagged) - 5} more" if len(flagged) > 5 else ""
    head = f"{len(flagged)} of {len(rows)} case(s) flagged (expected Dice below {threshold:.2f})"
    return f"{head}: {named}{more}; check them first, see {table}" if flagged else f"{head}; see {table}"


def _prepare_output_folder(output_folder: Path, args: argparse.Namespace) -> Path:
    """The folder the label maps go to (``OUTPUT/NAME`` for ``--submission NAME``), created."""
    if args.submission:
        if args.num_parts != 1:
            raise UserError("--submission needs every case in one run; drop --part-id/--num-parts.")
        if "/" in args.submission or args.submission in ("", ".", ".."):
            raise UserError(f"--submission {args.submission!r} must be a plain folder name.")
        output_folder = output_folder / args.submission
    output_folder.mkdir(parents=True, exist_ok=True)
    return output_folder


def _announce(args: argparse.Namespace, models, cases: list[Case]) -> None:
    """Say what will run, and how much memory the largest case needs."""
    first = models.members[0]
    print(
        f"autoseg predict: {len(cases)} case(s) with {models.description}, checkpoint {args.checkpoint}, "
        f"{'with' if first.options.tta else 'without'} mirroring, on {first.device}"
        f"{' with onnxruntime' if args.engine == 'onnx' else ''} in "
        f"{resolve_precision(first.options.precision, first.device)}"
        + (f", adapting each image's appearance ({args.adapt}, seed {args.seed})" if args.adapt else "")
    )
    memory = describe_largest_case(
        {case.identifier: read_image_header(case.images[0]).shape for case in cases},
        channels=first.dataset.num_channels, classes=first.dataset.num_output_channels, workers=max(1, args.workers),
    )
    if memory:
        print(f"autoseg predict: {memory}")


def _refuse_torch_only_options(args: argparse.Namespace) -> None:
    """``--engine onnx``: options that only make sense for torch are refused, not ignored."""

    if args.adapt:
        raise UserError("--adapt optimises torch networks; use --engine torch with the trained model folder.")
    if args.device not in ("auto", "cpu"):
        raise UserError(f"--engine onnx runs on the CPU; drop --device {args.device} or use --engine torch.")
    if args.precision not in ("auto", "float32"):
        raise UserError(f"--engine onnx runs in float32; drop --precision {args.precision} or use --engine torch.")
    if args.submission:
        raise UserError("--submission records training checkpoints; use --engine torch with the trained model folder.")


def _write_submission(folder: Path, models, args: argparse.Namespace, predictions: list[Path]) -> None:

    checkpoints = sorted({path for member in models.members for path in member.checkpoint_paths_used})
    description = {
        "configurations": [member.configuration_name for member in models.members],
        "folds": {member.configuration_name: list(member.trained_model.folds) for member in models.members},
        "checkpoint": args.checkpoint,
        "test_time_mirroring": not args.no_tta,
        "step_size": args.step_size,
        "precision": resolve_precision(args.precision, models.members[0].device),
        "postprocessing": models.postprocessing,
        "labels": {name: value for name, value in models.members[0].dataset.to_dict()["labels"].items()},
    }
    archive = write_submission(folder, model_folder=models.members[0].trained_model.model_folder,
                               checkpoint_paths=checkpoints, description=description, predictions=predictions)
    print(f"autoseg predict: submission manifest in {folder}, archive {archive}")
