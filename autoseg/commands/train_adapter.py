"""`autoseg train-adapter MODEL_FOLDER`: train the test-time appearance adapter of every fold of a trained model.

For each fold it preprocesses (a sample of) the fold's training cases, records what the model predicts on them
(foreground fractions, entropy: the plausibility ranges `predict --adapt` checks against), trains the shape prior of
the ``normaliser`` method and, by self-play, the renderer and discriminators of the ``adversarial`` method, and
writes them to ``models/CONFIG/fold_K/adaptation/`` (docs/adaptation.md).
"""

from __future__ import annotations

import argparse
import time

from autoseg.errors import UserError
from autoseg.inference.adaptation import ADAPTATION_METHODS
from autoseg.inference.adaptation.adapter import AdapterTrainingSettings
from autoseg.inference.loading import load_predictor
from autoseg.inference.model_source import ModelSource
from autoseg.inference.options import PredictionOptions
from autoseg.inference.predictor import Predictor
from autoseg.pipeline.adaptation import record_fold_adapter
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.locking import folder_lock
from autoseg.utils.threads import set_torch_threads


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder: WORK/<dataset> with trained folds")
    parser.add_argument("-c", "--configuration", default=None,
                        help="configuration (default: the recommended or only trained one)")
    parser.add_argument("-f", "--folds", nargs="+", default=None, help="folds (default: every trained fold)")
    parser.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final",
                        help="the checkpoint the adapter is made for (predict must use the same)")
    parser.add_argument("--methods", nargs="+", choices=ADAPTATION_METHODS, default=list(ADAPTATION_METHODS),
                        help="methods to train (default: all)")
    parser.add_argument("--max-cases", type=int, default=AdapterTrainingSettings.max_cases,
                        help="training cases per fold to learn from (default %(default)s, a seeded sample)")
    parser.add_argument("--shape-prior-steps", type=int, default=AdapterTrainingSettings.shape_prior_steps,
                        help="training steps of the normaliser's shape prior (default %(default)s)")
    parser.add_argument("--adversarial-steps", type=int, default=AdapterTrainingSettings.adversarial_steps,
                        help="self-play steps of the adversarial method (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="auto", help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:1, mps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every available CPU)")


def run(args: argparse.Namespace) -> int:
    set_torch_threads(args.threads)
    if min(args.max_cases, args.shape_prior_steps + 1, args.adversarial_steps + 1) < 1:
        raise UserError("--max-cases must be at least 1 and the step counts not negative.")
    predictor = load_predictor(ModelSource.checkpoints(args.model, configuration=args.configuration, folds=args.folds,
                                                       checkpoint=args.checkpoint),
                               PredictionOptions(device=args.device, tta=True))
    if predictor.previous_stage is not None:
        raise UserError(f"{args.model}: test-time adaptation does not support the cascade "
                        f"{predictor.configuration_name}; choose another configuration with -c.")
    settings = AdapterTrainingSettings(seed=args.seed, max_cases=args.max_cases, methods=tuple(args.methods),
                                       shape_prior_steps=args.shape_prior_steps,
                                       adversarial_steps=args.adversarial_steps)
    work = WorkFolder.at(predictor.trained_model.model_folder)
    for index, fold in enumerate(predictor.trained_model.folds):
        with folder_lock(work.fold(predictor.configuration_name, fold)):
            _train_fold(work, predictor, index, fold, settings)
    return 0


def _train_fold(work: WorkFolder, predictor: Predictor, index: int, fold: str,
                settings: AdapterTrainingSettings) -> None:
    started = time.perf_counter()
    record, folder = record_fold_adapter(work, predictor, index, fold, settings)
    ranges = record["source_ranges"]
    print(f"autoseg train-adapter: {predictor.configuration_name} fold {fold}: {ranges['images']} training "
          f"cases, foreground fraction {ranges['fraction_low']}-{ranges['fraction_high']}, methods "
          f"{', '.join(record['methods'])}, {time.perf_counter() - started:.0f} s -> {folder}")
