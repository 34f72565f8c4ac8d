"""Losses against hand-computed values; the ignore label masks; deep-supervision weighting; regions."""

from __future__ import annotations

import math

import pytest
import torch

from autoseg.errors import UserError
from autoseg.training.losses import LOSSES, build_loss, deep_supervision_weights

SMOOTH = 1e-5


def softmax_pair(a: float, b: float) -> tuple[float, float]:
    total = math.exp(a) + math.exp(b)
    return math.exp(a) / total, math.exp(b) / total


def two_voxel_example() -> tuple[torch.Tensor, torch.Tensor]:
    """One sample, two classes, two voxels: logits (0, 1) and (2, 0); labels 1 and 0."""
    logits = torch.tensor([[[[0.0, 2.0]], [[1.0, 0.0]]]])  # (B=1, K=2, 1, 2)
    target = torch.tensor([[[[1, 0]]]])  # (1, 1, 1, 2)
    return logits, target


def test_dice_ce_matches_a_hand_computation() -> None:
    logits, target = two_voxel_example()
    _, p0_fg = softmax_pair(0.0, 1.0)
    p1_bg, p1_fg = softmax_pair(2.0, 0.0)
    # Foreground Dice (background excluded): tp = p0_fg, fp = p1_fg, fn = 1 - p0_fg.
    true_positive, false_positive, false_negative = p0_fg, p1_fg, 1 - p0_fg
    dice = (2 * true_positive + SMOOTH) / (2 * true_positive + false_positive + false_negative + SMOOTH)
    cross_entropy = (-math.log(p0_fg) - math.log(p1_bg)) / 2
    loss = build_loss("dice_ce", num_classes=2)
    assert loss(logits, target).item() == pytest.approx((1 - dice) + cross_entropy, rel=1e-5)


def test_a_confident_correct_prediction_has_almost_zero_loss() -> None:
    target = torch.randint(0, 3, (2, 1, 6, 6))
    logits = 50.0 * torch.nn.functional.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float()
    for name in LOSSES:
        assert build_loss(name, num_classes=3)(logits, target).item() < 1e-3, name


def test_batch_dice_pools_statistics_over_the_batch() -> None:
    # Sample 0 predicts its only foreground voxel perfectly; sample 1 has no foreground and predicts one wrongly.
    logits = torch.full((2, 2, 1, 2), -20.0)
    logits[:, 0] = 20.0  # background everywhere...
    logits[0, :, 0, 0] = torch.tensor([-20.0, 20.0])  # ...except sample 0 voxel 0 -> foreground (correct)
    logits[1, :, 0, 1] = torch.tensor([-20.0, 20.0])  # and sample 1 voxel 1 -> foreground (wrong)
    target = torch.zeros(2, 1, 1, 2, dtype=torch.long)
    target[0, 0, 0, 0] = 1
    settings = {"num_classes": 2}
    per_sample = build_loss("dice_ce", batch_dice=False, **settings)(logits, target)
    pooled = build_loss("dice_ce", batch_dice=True, **settings)(logits, target)
    # Per sample: Dice 1 for sample 0, ~0 for sample 1 -> mean 0.5. Pooled: tp 1, fp 1, fn 0 -> 2/3.
    # The cross-entropy part (the wrong voxel) is the same in both variants and cancels in the difference.
    assert (per_sample - pooled).item() == pytest.approx((1 - 0.5) - (1 - 2 / 3), abs=1e-4)


def test_generalized_dice_weights_classes_by_inverse_squared_volume() -> None:
    # Three classes; hard (one-hot-like) probabilities so the statistics are integers.
    labels = torch.tensor([0, 1, 1, 1, 2, 0, 0, 0])
    predicted = torch.tensor([0, 1, 1, 2, 2, 0, 1, 0])
    logits = 30.0 * torch.nn.functional.one_hot(predicted, 3).T.reshape(1, 3, 1, 8).float()
    target = labels.reshape(1, 1, 1, 8)
    # Foreground classes: class 1 volume 3, tp 2, fp 1, fn 1; class 2 volume 1, tp 1, fp 1, fn 0.
    weights = [1 / 9, 1 / 1]
    numerator = 2 * (weights[0] * 2 + weights[1] * 1) + SMOOTH
    denominator = weights[0] * (4 + 1 + 1) + weights[1] * (2 + 1 + 0) + SMOOTH
    expected_dice_part = 1 - numerator / denominator
    value = build_loss("generalized_dice_ce", num_classes=3)(logits, target).item()
    # The CE part of a 30-logit margin: 2 wrong voxels of 8 cost ~30 nats each.
    expected_ce = 2 * 30.0 / 8
    assert value == pytest.approx(expected_dice_part + expected_ce, abs=1e-3)


def test_tversky_penalises_misses_more_than_false_alarms() -> None:
    target = torch.tensor([0, 1, 1, 0]).reshape(1, 1, 1, 4)
    miss = torch.tensor([0, 1, 0, 0])  # one false negative
    false_alarm = torch.tensor([1, 1, 1, 0])  # one false positive
    loss = build_loss("tversky_ce", num_classes=2)

    def value(predicted: torch.Tensor) -> float:
        logits = 30.0 * torch.nn.functional.one_hot(predicted, 2).T.reshape(1, 2, 1, 4).float()
        return loss(logits, target).item()

    ce = 30.0 / 4
    assert value(miss) == pytest.approx(1 - (1 + SMOOTH) / (1 + 0.7 + SMOOTH) + ce, abs=1e-3)
    assert value(false_alarm) == pytest.approx(1 - (2 + SMOOTH) / (2 + 0.3 + SMOOTH) + ce, abs=1e-3)


def test_focal_and_top_k_match_their_formulas() -> None:
    logits = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5, 0.0, 3.0, -2.0, 1.5, 0.2]).reshape(1, 1, 1, 10)
    logits = torch.cat([torch.zeros_like(logits), logits], dim=1)  # background logit 0
    target = torch.tensor([1, 0, 1, 1, 0, 1, 0, 1, 1, 0]).reshape(1, 1, 1, 10)
    probability_foreground = torch.sigmoid(logits[0, 1, 0])  # softmax of (0, z) is sigmoid(z)
    probability_true = torch.where(target[0, 0, 0] == 1, probability_foreground, 1 - probability_foreground)
    cross_entropy = -torch.log(probability_true)
    expected_focal = ((1 - probability_true) ** 2 * cross_entropy).mean()
    assert build_loss("focal", num_classes=2)(logits, target).item() == pytest.approx(expected_focal.item(), rel=1e-5)
    # Top 10 % of 10 voxels = the single hardest voxel.
    assert build_loss("topk_ce", num_classes=2)(logits, target).item() == pytest.approx(cross_entropy.max().item())


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("use_regions", [False, True])
def test_ignored_voxels_change_neither_the_loss_nor_the_gradient_elsewhere(name: str, use_regions: bool) -> None:
    torch.manual_seed(0)
    ignore_label = 3
    target = torch.randint(0, 3, (2, 1, 5, 6))
    target[:, :, :2] = ignore_label  # two ignored rows in every sample
    options = {"num_classes": 3, "ignore_label": ignore_label}
    if use_regions:
        options["regions"] = [[1, 2], [2]]
    channels = 2 if use_regions else 3
    loss = build_loss(name, **options)
    base = torch.randn(2, channels, 5, 6)
    changed = base.clone()
    changed[:, :, :2] = 100 * torch.randn(2, channels, 2, 6)  # wild logits where the label is ignored

    values, gradients = [], []
    for logits in (base, changed):
        logits = logits.clone().requires_grad_(True)
        value = loss(logits, target)
        value.backward()
        values.append(value.detach())
        gradients.append(logits.grad)
    assert torch.allclose(values[0], values[1], atol=1e-6)
    assert torch.allclose(gradients[0][:, :, 2:], gradients[1][:, :, 2:], atol=1e-7)
    assert torch.count_nonzero(gradients[1][:, :, :2]) == 0
    assert torch.count_nonzero(gradients[0][:, :, 2:]) > 0


def test_region_losses_use_sigmoid_channels_for_overlapping_label_sets() -> None:
    # Regions "whole = {1, 2}" and "core = {2}" overlap, so a voxel of label 2 is positive in both channels.
    target = torch.tensor([0, 1, 2, 2]).reshape(1, 1, 1, 4)
    region_targets = torch.tensor([[0.0, 1, 1, 1], [0, 0, 1, 1]])
    logits = torch.tensor([[-1.0, 2.0, 0.5, 1.0], [0.0, -1.0, 1.5, -0.5]]).reshape(1, 2, 1, 4)
    probabilities = torch.sigmoid(logits[0, :, 0])
    true_positive = (probabilities * region_targets).sum(dim=1)
    false_positive = (probabilities * (1 - region_targets)).sum(dim=1)
    false_negative = ((1 - probabilities) * region_targets).sum(dim=1)
    dice = (2 * true_positive + SMOOTH) / (2 * true_positive + false_positive + false_negative + SMOOTH)
    binary_ce = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, :, 0], region_targets)
    expected = (1 - dice.mean()) + binary_ce
    loss = build_loss("dice_ce", num_classes=3, regions=[[1, 2], [2]])
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_deep_supervision_weights_halve_per_scale_and_skip_the_lowest() -> None:
    assert deep_supervision_weights(4) == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0])
    assert deep_supervision_weights(1) == [1.0]
    torch.manual_seed(1)
    outputs = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]
    targets = [torch.randint(0, 3, (2, 1, size, size)) for size in (8, 4, 2)]
    loss = build_loss("dice_ce", num_classes=3)
    expected = (loss(outputs[0], targets[0]) + 0.5 * loss(outputs[1], targets[1])) / 1.5
    assert loss(outputs, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    # Garbage in the lowest resolution does not matter (weight 0), and an eval-mode single output uses targets[0].
    outputs[2] = torch.full_like(outputs[2], float("nan"))
    assert torch.isfinite(loss(outputs, targets))
    assert loss(outputs[0], targets).item() == pytest.approx(loss(outputs[0], targets[0]).item())
    custom = build_loss("dice_ce", num_classes=3, deep_supervision_weights=[0.0, 1.0, 0.0])
    assert custom(outputs, targets).item() == pytest.approx(loss(outputs[1], targets[1]).item())


def test_bad_labels_and_names_are_reported() -> None:
    with pytest.raises(ValueError, match="label value 5"):
        build_loss("dice_ce", num_classes=3)(torch.zeros(1, 3, 4, 4), torch.full((1, 1, 4, 4), 5))
    with pytest.raises(UserError, match="unknown loss"):
        build_loss("dice_bce_focal_magic", num_classes=2)
    with pytest.raises(ValueError, match="regions"):
        build_loss("dice_ce", num_classes=2, use_regions=True)


def test_half_precision_logits_of_a_large_patch_do_not_overflow() -> None:
    # 131072 foreground voxels: more than float16 can count (65504), as under mixed precision on a GPU.
    target = torch.ones(1, 1, 64, 64, 32, dtype=torch.long)
    logits = torch.zeros(1, 2, 64, 64, 32)
    logits[:, 1] = 5.0
    full_precision = build_loss("dice_ce", num_classes=2)(logits, target)
    half_precision = build_loss("dice_ce", num_classes=2)(logits.half(), target)
    assert torch.isfinite(half_precision)
    assert half_precision.item() == pytest.approx(full_precision.item(), rel=1e-3)
