"""Benchmark: does test-time appearance adaptation win back the Dice a scanner-like appearance shift costs?

What it does, for one trained fold of a model folder (``autoseg train-adapter`` must have run on it):

1. Takes the fold's validation cases (never seen in training) and writes two copies of each image: *clean* (the
   original voxels) and *shifted*, changed by a seeded generator of scanner-like appearance shifts (below). The
   anatomy, geometry and labels stay as they are.
2. Segments both sets without adaptation and with each ``--adapt`` method, with the same fold and options
   (test-time mirroring on, as ``autoseg predict`` defaults), and times every run.
3. Reports mean Dice over the foreground labels and cases, for clean and shifted images before and after each
   method, the fraction of the Dice lost to the shift that each method wins back
   ``(shifted_adapted - shifted_unadapted) / (clean_unadapted - shifted_unadapted)``, the change on clean images,
   how many cases fell back to the unadapted prediction, and the seconds per image. It writes ``results.json`` and
   ``results.md`` into ``--out`` (``results.json`` names the model and output folders relative to the project
   root, or by their name alone when they lie elsewhere: never a folder of one machine).

The shifts (``--severity`` scales all of them; every image draws its own values from ``--seed`` and its name):

*Ultrasound* (a 2D B-mode image with its probe at the top, rows = depth):
    resolution loss   Gaussian blur, wider laterally than axially (a lower-frequency probe, a wider beam):
                      sigma = severity * (U(0.25, 0.4) mm axial, U(0.6, 0.9) mm lateral)
    speckle           multiplicative gamma-distributed speckle with U(1.5, 3) looks and a grain of ~0.15 mm
                      (a scanner with less speckle reduction), raised to the power ``severity``
    gain and TGC      overall gain U(2, 5) dB and a time-gain compensation that falls by U(8, 14) dB from the top
                      to the bottom of the image, times ``severity`` (deep tissue darker, shallow tissue saturating)
    dynamic range     log-compression change as a power law on the normalised envelope, exponent
                      1 + severity * U(0.5, 0.9) (a narrower displayed dynamic range: darker mid-greys)
*MRI* (an intensity volume of arbitrary units):
    bias field        exp of a random second-order polynomial in the normalised coordinates, amplitude
                      0.35 * severity (a different coil profile)
    contrast, gamma   the 0.5-99.5 percentile range mapped to [0, 1], raised to 1 + severity * U(0.4, 0.8)
    noise             Rician noise of sigma 0.04 * severity of that range (a lower field strength)

Usage (the model folder is only read; adapters must exist, see docs/adaptation.md):

    python benchmarks/appearance_shift.py --model WORK/Dataset018_HC18 --modality ultrasound --out SHIFT_RESULTS \
        [--configuration 2d] [--fold 0] [--cases 30] [--severity 2.0] [--methods normaliser adversarial]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from provenance import relative_to_repository  # noqa: E402

from autoseg.inference.loading import load_ensemble  # noqa: E402
from autoseg.inference.model_source import ModelSource  # noqa: E402
from autoseg.inference.options import PredictionOptions  # noqa: E402
from autoseg.inference.pipeline import adaptation_report_path  # noqa: E402
from autoseg.io.images import read_image, write_image  # noqa: E402
from autoseg.records.work_folder import WorkFolder  # noqa: E402
from autoseg.utils.files import read_json  # noqa: E402


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def shift_ultrasound(
    image: np.ndarray, rng: np.random.Generator, *, severity: float, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """A B-mode image ``(1, rows = depth, columns)`` with pixel ``spacing`` (mm, z y x) as another scanner might
    show it (see the module docstring)."""
    scale = max(255.0, float(image.max()))
    envelope = image.astype(np.float64) / scale
    axial_mm, lateral_mm = severity * rng.uniform(0.25, 0.4), severity * rng.uniform(0.6, 0.9)
    blurred = np.stack([
        ndimage.gaussian_filter(plane, (axial_mm / spacing[-2], lateral_mm / spacing[-1])) for plane in envelope
    ])
    looks = rng.uniform(1.5, 3.0)
    grain = (0, 0.15 / spacing[-2], 0.15 / spacing[-1])  # speckle grain of about 0.15 mm
    speckle = ndimage.gaussian_filter(rng.gamma(looks, 1.0 / looks, size=blurred.shape), grain)
    speckled = blurred * (speckle / speckle.mean()) ** severity
    depth = np.linspace(0.0, 1.0, image.shape[-2])[:, None]
    gain_db = severity * (rng.uniform(2.0, 5.0) - rng.uniform(8.0, 14.0) * depth)
    gained = np.clip(speckled * 10.0 ** (gain_db / 20.0), 0.0, 1.0)
    compressed = gained ** (1.0 + severity * rng.uniform(0.5, 0.9))
    return (compressed * scale).astype(np.float32)


def shift_mri(
    image: np.ndarray, rng: np.random.Generator, *, severity: float, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """An MRI volume ``(z, y, x)`` as another scanner might show it (see the module docstring)."""
    low, high = np.percentile(image, [0.5, 99.5])
    unit = np.clip((image.astype(np.float64) - low) / max(high - low, 1e-6), 0.0, None)
    coordinates = np.meshgrid(*[np.linspace(-1.0, 1.0, size) for size in image.shape], indexing="ij")
    terms = [*coordinates, *(a * b for i, a in enumerate(coordinates) for b in coordinates[i:])]
    field = sum(rng.normal(0.0, 1.0) * term for term in terms)
    field = 0.35 * severity * field / max(np.abs(field).max(), 1e-6)
    unit = (unit * np.exp(field)) ** (1.0 + severity * rng.uniform(0.4, 0.8))
    sigma = 0.04 * severity
    noisy = np.sqrt((unit + rng.normal(0.0, sigma, unit.shape)) ** 2 + rng.normal(0.0, sigma, unit.shape) ** 2)
    return (noisy * (high - low) + low).astype(np.float32)


SHIFTS = {"ultrasound": shift_ultrasound, "mri": shift_mri}


def write_inputs(cases, out: Path, *, modality: str, seed: int, severity: float) -> dict[str, Path]:
    """``out/clean`` and ``out/shifted`` input folders (the first channel shifted, the others copied)."""
    folders = {"clean": out / "inputs" / "clean", "shifted": out / "inputs" / "shifted"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        for channel, path in enumerate(case.images):
            image = read_image(path)
            name = f"{case.identifier}_{channel:04d}.nii.gz"
            write_image(image.array.astype(np.float32), image.geometry, folders["clean"] / name)
            shifted = SHIFTS[modality](image.array, _rng(seed, f"{case.identifier}/{channel}"), severity=severity,
                                       spacing=image.geometry.spacing)
            write_image(shifted, image.geometry, folders["shifted"] / name)
    return folders


def mean_dice(prediction: np.ndarray, reference: np.ndarray, labels: list[int]) -> float:
    """Mean Dice over ``labels`` (a label absent from both counts as 1)."""
    scores = []
    for label in labels:
        predicted, expected = prediction == label, reference == label
        total = predicted.sum() + expected.sum()
        scores.append(1.0 if total == 0 else 2.0 * np.logical_and(predicted, expected).sum() / total)
    return float(np.mean(scores))


def predict_condition(model: Path, args, cases, inputs: Path, output: Path, method: str | None) -> dict:
    """Segment one input folder with one method; Dice per case, seconds per image, fallbacks."""
    models = load_ensemble(
        ModelSource.checkpoints(model, configuration=args.configuration, folds=[args.fold], postprocessing=False),
        PredictionOptions(device="cpu", adapt=method),
    )
    images = [[inputs / f"{case.identifier}_{c:04d}.nii.gz" for c in range(len(case.images))] for case in cases]
    outputs = [output / f"{case.identifier}.nii.gz" for case in cases]
    started = time.perf_counter()
    models.predict_files(images, outputs, workers=0, progress=False)
    seconds = (time.perf_counter() - started) / len(cases)
    labels = sorted(value for name, value in models.members[0].dataset.labels.items() if name != "background")
    dice = {case.identifier: mean_dice(read_image(path).array, read_image(case.label).array, labels)
            for case, path in zip(cases, outputs, strict=True)}
    result = {"dice": dice, "mean_dice": statistics.mean(dice.values()), "seconds_per_image": seconds}
    if method:
        reports = [json.loads(adaptation_report_path(path).read_text()) for path in outputs]
        result["fallbacks"] = sum(report["fell_back"] for report in reports)
        result["adaptation_seconds"] = statistics.mean(
            fold["seconds"] for report in reports for member in report["members"] for fold in member["folds"]
        )
    return result


def summarise(results: dict, methods: list[str]) -> tuple[dict, str]:
    """The table: Dice clean / shifted per method, recovered fraction, clean change, seconds."""
    clean, shifted = results["clean"]["none"]["mean_dice"], results["shifted"]["none"]["mean_dice"]
    lost = clean - shifted
    rows = [f"| none | {100 * clean:.2f} | {100 * shifted:.2f} | - | - | - | "
            f"{results['shifted']['none']['seconds_per_image']:.2f} |"]
    summary = {"clean_unadapted": clean, "shifted_unadapted": shifted, "dice_points_lost": 100 * lost, "methods": {}}
    for method in methods:
        clean_adapted = results["clean"][method]["mean_dice"]
        shifted_adapted = results["shifted"][method]["mean_dice"]
        recovered = (shifted_adapted - shifted) / lost if lost > 0 else None
        summary["methods"][method] = {
            "clean": clean_adapted, "shifted": shifted_adapted, "recovered_fraction": recovered,
            "clean_change_points": 100 * (clean_adapted - clean),
            "fallbacks_clean": results["clean"][method]["fallbacks"],
            "fallbacks_shifted": results["shifted"][method]["fallbacks"],
            "seconds_per_image": results["shifted"][method]["seconds_per_image"],
            "adaptation_seconds": results["shifted"][method]["adaptation_seconds"],
        }
        rows.append(
            f"| {method} | {100 * clean_adapted:.2f} | {100 * shifted_adapted:.2f} | "
            f"{'-' if recovered is None else f'{100 * recovered:.0f}%'} | {100 * (clean_adapted - clean):+.2f} | "
            f"{results['clean'][method]['fallbacks']} / {results['shifted'][method]['fallbacks']} | "
            f"{results['shifted'][method]['seconds_per_image']:.2f} |"
        )
    header = ("| method | Dice clean | Dice shifted | lost Dice recovered | clean change (points) | "
              "fallbacks clean / shifted | seconds per image |\n|---|---|---|---|---|---|---|")
    return summary, "\n".join([header, *rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="model folder with adapters (only read)")
    parser.add_argument("--modality", required=True, choices=sorted(SHIFTS))
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--configuration", default=None)
    parser.add_argument("--fold", default="0")
    parser.add_argument("--cases", type=int, default=30, help="validation cases to use (N, sorted, from --first)")
    parser.add_argument("--first", type=int, default=0, help="index of the first validation case used (sorted)")
    parser.add_argument("--severity", type=float, default=2.0,
                        help="scales every shift (default 2: on HC18, 1 cost a trained model no Dice, 2 about 7-9 "
                             "points, 3 about 19)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=["normaliser", "adversarial"])
    args = parser.parse_args()
    work = WorkFolder.at(args.model)
    dataset = work.read_dataset()
    validation = sorted(read_json(work.splits)[int(args.fold)]["val"])[args.first: args.first + args.cases]
    cases = [dataset.case(identifier) for identifier in validation]
    inputs = write_inputs(cases, args.out, modality=args.modality, seed=args.seed, severity=args.severity)
    results: dict = {"clean": {}, "shifted": {}}
    for condition in ("clean", "shifted"):
        for method in [None, *args.methods]:
            name = method or "none"
            output = args.out / "predictions" / condition / name
            results[condition][name] = predict_condition(args.model, args, cases, inputs[condition], output, method)
            print(f"{condition:8s} {name:12s} Dice {100 * results[condition][name]['mean_dice']:.2f} "
                  f"({results[condition][name]['seconds_per_image']:.2f} s per image)", flush=True)
    summary, table = summarise(results, args.methods)
    settings = {key: relative_to_repository(value) if isinstance(value, Path) else str(value)
                for key, value in vars(args).items()}
    (args.out / "results.json").write_text(json.dumps({"settings": settings, "summary": summary,
                                                       "results": results}, indent=1))
    (args.out / "results.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
