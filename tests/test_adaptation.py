"""Test-time appearance adaptation: `train-adapter`, `predict --adapt`, fallback, determinism, no writes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from model_helpers import first_identifiers, link_cases, make_model_folder, tiny_configuration

from autoseg.cli import main
from autoseg.inference.adaptation import adapter as adapter_module
from autoseg.inference.adaptation.plausibility import PredictionSummary, SourceRanges
from autoseg.inference.adaptation.small_networks import InputNormaliser
from autoseg.inference.adaptation.standardise import SourceIntensities, intensity_landmarks, standardiser_for
from autoseg.inference.loading import load_predictor
from autoseg.inference.model_source import ModelSource
from autoseg.inference.options import PredictionOptions
from autoseg.io.images import read_image, read_image_header
from autoseg.pipeline.adaptation import standardisation_stage
from autoseg.pipeline.budget import RunBudget
from autoseg.records.inference_recipe import InferenceRecipe, RecipeModel
from autoseg.records.work_folder import WorkFolder
from autoseg.transforms.case import preprocess_case

QUICK = ["--shape-prior-steps", "20", "--adversarial-steps", "4", "--max-cases", "4", "--device", "cpu",
         "--threads", "1"]
PREDICT = ["--device", "cpu", "--threads", "1", "--workers", "0"]


@pytest.fixture(scope="module")
def hc18_model(tmp_path_factory, hc18_root):
    """A tiny 2D HC18 model folder whose fold 0 was trained on six real cases (random weights), without adapter."""
    configuration = tiny_configuration(dimension=2, spacing=(1.0, 0.6, 0.6), patch_size=(128, 128), features=(4, 8, 8))
    model = make_model_folder(tmp_path_factory.mktemp("work") / "Dataset018_HC18", hc18_root, {"2d": configuration})
    identifiers = first_identifiers(hc18_root, 9)
    (model / "splits.json").write_text(json.dumps([{"train": identifiers[:6], "val": identifiers[6:]}]))
    return model


@pytest.fixture(scope="module")
def adapted_model(tmp_path_factory, hc18_model):
    """``hc18_model`` copied, with both adaptation methods trained for a few steps."""
    model = tmp_path_factory.mktemp("adapted") / hc18_model.name
    shutil.copytree(hc18_model, model)
    assert main(["train-adapter", str(model), *QUICK]) == 0
    return model


@pytest.fixture(scope="module")
def validation_inputs(tmp_path_factory, hc18_root):
    return link_cases(hc18_root, tmp_path_factory.mktemp("inputs") / "in", first_identifiers(hc18_root, 9)[6:8])


def test_train_adapter_writes_a_json_record_and_weights_only_state_dicts(adapted_model):
    folder = adapted_model / "models" / "2d" / "fold_0" / "adaptation"
    record = json.loads((folder / "adaptation.json").read_text())
    assert set(record["methods"]) == {"normaliser", "adversarial", "standardise"}
    assert len(record["source_intensities"]["low"][0]) == len(record["source_intensities"]["percentiles"])
    ranges = record["source_ranges"]
    assert ranges["images"] == 4 and len(ranges["fraction_low"]) == 1  # HC18: one foreground class
    assert 0 <= ranges["fraction_low"][0] <= ranges["fraction_high"][0] <= 1
    for method in (record["methods"][name] for name in ("normaliser", "adversarial")):
        state = torch.load(folder / method["file"], weights_only=True)
        assert state  # loads without pickle
    bank = torch.load(folder / "adversarial.pt", weights_only=True)["bank_images"]
    assert bank.shape[1:] == (1, 128, 128)


@pytest.mark.parametrize("method", ["standardise", "normaliser", "adversarial"])
def test_predict_adapt_is_deterministic_per_case_and_never_writes_into_the_model_folder(
    adapted_model, validation_inputs, tmp_path, tree_hashes, method
):
    before = tree_hashes(adapted_model)
    both, alone = tmp_path / "both", tmp_path / "alone"
    assert main(["predict", "-i", str(validation_inputs), "-o", str(both), "-m", str(adapted_model),
                 "--adapt", method, "--seed", "3", *PREDICT]) == 0
    # The second case predicted on its own: nothing may carry over from the first case's adaptation.
    second = sorted(validation_inputs.iterdir())[1]
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / second.name).symlink_to(second.resolve())
    assert main(["predict", "-i", str(tmp_path / "one"), "-o", str(alone), "-m", str(adapted_model),
                 "--adapt", method, "--seed", "3", *PREDICT]) == 0
    assert tree_hashes(adapted_model) == before
    name = second.name.replace("_0000", "")
    assert np.array_equal(read_image(both / name).array, read_image(alone / name).array)
    report_both = json.loads((both / name.replace(".nii.gz", ".adaptation.json")).read_text())
    report_alone = json.loads((alone / name.replace(".nii.gz", ".adaptation.json")).read_text())
    fold_both, fold_alone = report_both["members"][0]["folds"][0], report_alone["members"][0]["folds"][0]
    assert fold_both["losses"] == fold_alone["losses"]
    assert len(fold_both["losses"]) > 0 or method == "standardise"  # the closed-form method has no steps
    assert report_both["members"][0]["method"] == method and report_both["members"][0]["seed"] == 3


def test_predict_adapt_without_an_adapter_is_one_sentence_naming_train_adapter(
    hc18_model, validation_inputs, tmp_path, capsys
):
    code = main(["predict", "-i", str(validation_inputs), "-o", str(tmp_path / "out"), "-m", str(hc18_model),
                 "--adapt", *PREDICT])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert "autoseg train-adapter" in error and str(hc18_model) in error
    assert error.count("\n") == 0 and error.endswith(".")
    assert not list((tmp_path / "out").glob("*.nii.gz"))


def test_a_model_from_autoseg_run_accepts_predict_adapt_without_train_adapter(
    hc18_model, validation_inputs, tmp_path, capsys
):
    """After model selection the run records what the default method needs for the selected folds, when the budget
    has the time for it; without the time it records nothing and says how to record it later."""
    model = tmp_path / hc18_model.name
    shutil.copytree(hc18_model, model)
    work = WorkFolder.at(model)
    shutil.rmtree(work.adaptation("2d", 0), ignore_errors=True)  # as a run leaves it before this stage
    recipe = InferenceRecipe(models=(RecipeModel("2d", (0,)),))
    standardisation_stage(work, recipe, device="cpu", precision="auto", budget=RunBudget(time.monotonic(), 1.0),
                          case_seconds=lambda _configuration: 1.0)
    assert not (work.adaptation("2d", 0) / "adaptation.json").exists()
    assert f"autoseg train-adapter {work.root}" in capsys.readouterr().out
    standardisation_stage(work, recipe, device="cpu", precision="auto", budget=RunBudget(time.monotonic(), None),
                          case_seconds=lambda _configuration: None)
    assert sorted(path.name for path in work.adaptation("2d", 0).iterdir()) == ["adaptation.json"]  # nothing trained
    assert "test-time standardisation of 2d fold 0" in capsys.readouterr().out

    output = tmp_path / "out"
    assert main(["predict", "-i", str(validation_inputs), "-o", str(output), "-m", str(model), "--adapt",
                 *PREDICT]) == 0
    for image in sorted(validation_inputs.iterdir()):
        label_map = output / image.name.replace("_0000", "")
        assert read_image_header(label_map) == read_image_header(image)  # the input's geometry
        report = json.loads(label_map.with_name(label_map.name.replace(".nii.gz", ".adaptation.json")).read_text())
        assert report["members"][0]["method"] == "standardise"


def test_train_adapter_prints_no_library_warning(hc18_model, tmp_path):
    """A fresh process, as a user runs it: a warning torch issues only once per process cannot hide here."""
    model = tmp_path / hc18_model.name
    shutil.copytree(hc18_model, model)
    command = [sys.executable, "-W", "error::UserWarning", "-m", "autoseg", "train-adapter", str(model), *QUICK]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "Warning" not in completed.stderr and "warn" not in completed.stdout.lower()


def _crafted_normaliser(offset: float) -> InputNormaliser:
    """A normaliser that adds ``offset`` to every voxel: the segmenter then sees a washed-out image."""
    normaliser = InputNormaliser(1, dimension=2)
    torch.nn.init.constant_(normaliser.layers[-1].bias, offset)
    return normaliser.eval()


def test_an_implausible_adapted_prediction_falls_back_to_the_unadapted_one_and_says_why(
    adapted_model, hc18_root, monkeypatch
):
    predictor = load_predictor(ModelSource.checkpoints(adapted_model),
                               PredictionOptions(device="cpu", adapt="normaliser"))
    case_id = first_identifiers(hc18_root, 9)[6]
    data, _, _ = preprocess_case([str(hc18_root / "imagesTr" / f"{case_id}_0000.nii.gz")], None,
                                 configuration=predictor.configuration)
    unadapted = predictor.network_probabilities(predictor.networks[0], torch.as_tensor(data))
    summary = PredictionSummary.of(unadapted, uses_regions=False)
    # Training images on which the model predicted exactly this case's volume: any volume jump is implausible.
    fraction = summary.foreground_fractions
    predictor.adaptation.adapters[0].ranges = SourceRanges(fraction, fraction, summary.mean_entropy, 1)
    offset = 50.0 if fraction[0] < 0.5 else -50.0
    monkeypatch.setattr(adapter_module, "adapt_normaliser",
                        lambda *args, **kwargs: (_crafted_normaliser(offset), [1.0]))
    probabilities, report = predictor.predict_preprocessed_reported(data)
    assert report["fell_back"] and report["folds_fallen_back"] == ["0"]
    fold = report["folds"][0]
    assert fold["used"] == "unadapted" and "foreground fraction" in fold["fallback_reasons"][0]
    assert fold["adapted"]["foreground_fractions"] != fold["unadapted"]["foreground_fractions"]
    assert torch.equal(probabilities, unadapted)


def test_plausibility_accepts_predictions_like_the_training_ones_and_refuses_jumps():
    ranges = SourceRanges(fraction_low=(0.1,), fraction_high=(0.3,), entropy_high=0.05, images=10)
    typical = PredictionSummary((0.2,), 0.04)
    assert ranges.problems(PredictionSummary((0.25,), 0.03), typical) == []
    assert ranges.problems(PredictionSummary((0.9,), 0.03), typical)  # volume jump out of the range
    # Already outside and moving back towards the range is an improvement, not a jump.
    assert ranges.problems(PredictionSummary((0.5,), 0.03), PredictionSummary((0.8,), 0.03)) == []
    assert "entropy" in ranges.problems(PredictionSummary((0.2,), 0.2), typical)[0]
    # Within the training entropies, but far less sure than before adapting: refused; a little less sure: kept.
    assert "less sure" in ranges.problems(PredictionSummary((0.2,), 0.045), PredictionSummary((0.2,), 0.02))[0]
    assert ranges.problems(PredictionSummary((0.2,), 0.022), PredictionSummary((0.2,), 0.02)) == []


def _standardised(image: np.ndarray, source: SourceIntensities) -> np.ndarray:
    standardiser = standardiser_for(image, source)
    if standardiser is None:
        return image
    return standardiser(torch.as_tensor(image, dtype=torch.float32)[None])[0].numpy()


def test_intensity_standardisation_leaves_training_like_images_and_pulls_foreign_ones_back():
    generator = np.random.default_rng(0)

    def z_scored(image):
        return (image - image.mean()) / image.std()

    training = [z_scored(generator.normal(0.0, 1.0, (1, 60, 60))) for _ in range(30)]
    source = SourceIntensities.of([intensity_landmarks(image) for image in training])
    low, high = np.asarray(source.low)[0], np.asarray(source.high)[0]
    training_like = z_scored(generator.normal(0.0, 1.0, (1, 60, 60)))
    assert np.abs(_standardised(training_like, source) - training_like).max() < 0.1
    foreign = z_scored(np.exp(1.5 * training[0]))  # another dynamic range: a skewed histogram after the z-score
    assert np.any(intensity_landmarks(foreign)[0] > high + 0.3) or np.any(intensity_landmarks(foreign)[0] < low - 0.3)
    mapped = _standardised(foreign, source)
    landmarks = intensity_landmarks(mapped)[0]
    assert np.all(landmarks >= low - 0.05) and np.all(landmarks <= high + 0.05)
    order = np.argsort(foreign.ravel())
    assert np.all(np.diff(mapped.ravel()[order]) >= -1e-5)  # monotone: the order of intensities is kept
