"""Per-case quality estimates: the signals, the score, quality.csv from `autoseg predict`, and its calibration."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import first_identifiers, link_cases, make_model_folder, tiny_configuration

from autoseg.cli import main
from autoseg.evaluation.failure_detection import aurc, failure_auroc, fit_monotone_map, risk_coverage
from autoseg.inference.quality import (
    AgreementCounts,
    FlipAgreement,
    LabelMapStatistics,
    NetworkSignals,
    assess_case,
    class_masks,
    label_map_statistics,
)
from autoseg.inference.quality_table import read_quality_table
from autoseg.inference.sliding_window import predict_sliding_window
from autoseg.records.fingerprint import Fingerprint
from autoseg.records.quality_model import QualityModel
from autoseg.utils.files import write_json


def test_pairwise_dice_of_label_maps_counts_each_class_and_agrees_on_an_absent_one():
    maps = torch.tensor([[0, 1, 1, 1, 2, 2], [0, 1, 1, 0, 2, 0], [0, 1, 0, 0, 2, 2]], dtype=torch.uint8)
    counts = AgreementCounts(num_targets=3, num_maps=3)
    counts.add(class_masks(maps, targets=(1, 2, 3)))
    dice = counts.pairwise_dice()
    # class 1: sizes 3, 2, 1 and overlaps 2 (a,b), 1 (a,c), 1 (b,c)
    assert dice[0] == pytest.approx(np.mean([2 * 2 / 5, 2 * 1 / 4, 2 * 1 / 3]))
    assert dice[1] == pytest.approx(np.mean([2 * 1 / 3, 2 * 2 / 4, 2 * 1 / 3]))
    assert dice[2] == 1.0  # no map holds class 3: they agree


class _Shifted(torch.nn.Module):
    """Logits that prefer class 1 on the upper half of the patch along x: not mirror-equivariant."""

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = torch.linspace(-1, 1, batch.shape[-1])
        logits = torch.zeros(batch.shape[0], 2, *batch.shape[2:])
        logits[:, 1] = x
        return logits


def test_mirror_agreement_is_one_for_a_flip_equivariant_network_and_low_for_one_that_is_not():
    data = torch.randn(1, 8, 8, 8)
    conv = torch.nn.Conv3d(1, 2, kernel_size=1)  # voxel-wise: mirroring changes nothing
    for network, expected in ((conv, 1.0), (_Shifted(), 0.0)):
        agreement = FlipAgreement(targets=(1,), num_flips=2, uses_regions=False)
        with torch.no_grad():
            predict_sliding_window(network, data, patch_size=(8, 8, 8), num_classes=2, mirror_axes=(2,),
                                   precision="float32", agreement=agreement)
        assert agreement.counts.pairwise_dice()[0] == pytest.approx(expected, abs=1e-6)


def test_label_map_statistics_find_a_stray_blob_and_measure_volume_in_mm3():
    label_map = np.zeros((1, 20, 20), dtype=np.uint8)
    label_map[0, 2:8, 2:8] = 1  # 36 voxels
    label_map[0, 15:17, 15:17] = 1  # a stray blob of 4
    statistics = label_map_statistics(label_map, spacing=(1.0, 0.5, 0.5), targets=(1, 2))
    assert statistics.volumes_mm3 == {1: pytest.approx(40 * 0.25), 2: 0.0}
    assert statistics.largest_piece == {1: pytest.approx(36 / 40), 2: 1.0}


def _fingerprint() -> Fingerprint:
    return Fingerprint.from_json({"cases": {
        "a": {"spacing": [1, 1, 1], "class_voxels": {"1": 100, "2": 10}},
        "b": {"spacing": [2, 1, 1], "class_voxels": {"1": 100, "2": 0}},
    }})


def test_volume_ranges_come_from_the_training_labels():
    model = QualityModel.from_fingerprint(_fingerprint())
    assert model.volume_ranges == {"1": (100.0, 200.0, 1.0), "2": (10.0, 10.0, 0.5)}
    assert model.volume_factor(1, 0.0) == 0.0  # every training case has it: missing is a failure
    assert model.volume_factor(2, 0.0) == 1.0  # half the cases lack it: missing is fine
    assert model.volume_factor(1, 400.0) == 0.5


def test_a_case_with_a_stray_blob_and_disagreeing_mirrors_scores_low_and_says_why():
    model = dataclasses.replace(QualityModel.from_fingerprint(_fingerprint()), raw_scores=(0.5, 1.0),
                                expected=(0.6, 0.9), flag_below=0.7)
    good = assess_case("good", NetworkSignals(mirror_agreement={1: 0.98, 2: 0.95}),
                       LabelMapStatistics({1: 150.0, 2: 10.0}, {1: 1.0, 2: 1.0}),
                       target_names={1: "organ", 2: "lesion"}, model=model, flag_below=None)
    bad = assess_case("bad", NetworkSignals(mirror_agreement={1: 0.7, 2: 0.95}, confidence=0.8),
                      LabelMapStatistics({1: 150.0, 2: 10.0}, {1: 0.5, 2: 1.0}),
                      target_names={1: "organ", 2: "lesion"}, model=model, flag_below=None)
    assert good.raw_score > bad.raw_score and not good.flagged and bad.flagged
    assert bad.per_class["organ"] == pytest.approx(0.35)
    assert bad.raw_score == pytest.approx((0.35 + 0.95) / 2 * 0.8)  # the mean over classes times the confidence
    assert bad.reasons == ["organ: mirror passes agree 0.70", "organ: in its largest piece 0.50",
                           "mean confidence 0.80"]
    assert bad.expected_dice == pytest.approx(model.expected_dice(bad.raw_score))
    assert assess_case("bad", bad.signals, bad.statistics, target_names={1: "organ", 2: "lesion"}, model=model,
                       flag_below=0.2).flagged is False  # --flag-below overrides the model's threshold


def test_risk_coverage_rewards_a_score_that_ranks_failures_last():
    dice = [0.95, 0.9, 0.92, 0.4, 0.88, 0.3]
    perfect = dice
    reversed_scores = [-value for value in dice]
    constant = [0.5] * len(dice)
    assert aurc(perfect, dice) < aurc(constant, dice) < aurc(reversed_scores, dice)
    assert aurc(constant, dice) == pytest.approx(1 - np.mean(dice))
    assert failure_auroc(perfect, dice) == 1.0 and failure_auroc(reversed_scores, dice) == 0.0
    coverage, risk = risk_coverage(perfect, dice)
    assert coverage[-1] == 1.0 and risk[-1] == pytest.approx(1 - np.mean(dice))


def test_the_monotone_map_never_decreases_and_fits_the_mean_of_ties():
    knots, values = fit_monotone_map([0.2, 0.5, 0.5, 0.9, 0.8], [0.5, 0.4, 0.6, 0.9, 0.95])
    assert knots == (0.2, 0.5, 0.8, 0.9)
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert values[1] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def hippocampus_model(tmp_path_factory, hippocampus_root) -> Path:
    """A tiny 2-fold model with a calibrated quality model whose threshold flags every case."""
    work = tmp_path_factory.mktemp("quality_model")
    configuration = tiny_configuration(dimension=3, spacing=(1.0, 1.0, 1.0), patch_size=(24, 32, 24))
    model = make_model_folder(work / "Dataset004_Hippocampus", hippocampus_root, {"3d_fullres": configuration},
                              folds=(0, 1))
    quality = QualityModel(raw_scores=(0.5, 1.0), expected=(0.4, 0.9), flag_below=1.01,
                           volume_ranges={"1": (500.0, 2000.0, 1.0), "2": (500.0, 2000.0, 1.0)})
    write_json(model / "inference.json", {"models": [{"configuration": "3d_fullres", "folds": [0, 1]}],
                                          "quality": quality.to_json()})
    return model


def test_predict_writes_quality_csv_names_the_flagged_cases_and_an_imported_model_scores_the_same(
    hippocampus_model, hippocampus_root, tmp_path, capsys
):
    identifiers = first_identifiers(hippocampus_root, 2)
    inputs = link_cases(hippocampus_root, tmp_path / "inputs", identifiers)
    arguments = ["--workers", "0", "--threads", "1", "--precision", "float32"]
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(hippocampus_model),
                 *arguments]) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "2 of 2 case(s) flagged (expected Dice below 1.01)" in last_line and identifiers[0] in last_line
    rows = read_quality_table(tmp_path / "out" / "quality.csv")
    assert [row["case"] for row in rows] == identifiers
    for row in rows:
        assert 0.0 <= float(row["expected_dice"]) <= 1.0 and row["flagged"] == "1"
        # two folds and mirroring: both agreements exist for both classes
        for name in ("anterior", "posterior"):
            assert row[f"mirror_{name}"] and row[f"folds_{name}"] and row[f"volume_mm3_{name}"]

    archive = tmp_path / "model.zip"
    assert main(["export-model", str(hippocampus_model), str(archive)]) == 0
    assert main(["import-model", str(archive), str(tmp_path / "imported")]) == 0
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "again"), "-m", str(tmp_path / "imported"),
                 *arguments]) == 0
    assert read_quality_table(tmp_path / "again" / "quality.csv") == rows

    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "plain"), "-m", str(hippocampus_model),
                 "--no-quality", *arguments]) == 0
    assert not (tmp_path / "plain" / "quality.csv").exists()
    assert json.loads((hippocampus_model / "inference.json").read_text())["quality"]["flag_below"] == 1.01
