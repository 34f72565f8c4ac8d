"""Segmentation losses by name (Dice + CE and class-imbalance alternatives), ignore label and deep supervision."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from autoseg.errors import UserError

DICE_SMOOTHING = 1e-5
TVERSKY_FALSE_POSITIVE_WEIGHT = 0.3
TVERSKY_FALSE_NEGATIVE_WEIGHT = 0.7
FOCAL_GAMMA = 2.0
TOP_K_FRACTION = 0.1


@dataclass(frozen=True)
class LossSettings:
    """What every loss needs to know about the label space.

    ``number_of_classes`` counts background (softmax channels). With ``regions`` (a list of label sets), the network
    has one sigmoid channel per region and region ``r`` is "label in regions[r]". Voxels whose label equals
    ``ignore_label`` contribute nothing. ``batch_dice`` pools Dice statistics over the whole batch instead of per
    sample (steadier for 2D where one slice often lacks a class).
    """

    number_of_classes: int
    regions: tuple[tuple[int, ...], ...] | None = None
    ignore_label: int | None = None
    batch_dice: bool = False

    @property
    def use_regions(self) -> bool:
        return self.regions is not None


@dataclass
class PreparedTarget:
    """A label map turned into what the loss terms consume."""

    labels: torch.Tensor  # (B, *spatial) int64, ignored voxels set to 0
    dense_target: torch.Tensor  # (B, channels, *spatial) float: one-hot classes or region masks
    valid: torch.Tensor  # (B, 1, *spatial) float: 1 where the voxel counts, 0 at the ignore label
    number_of_valid: torch.Tensor  # scalar float, >= 1


def prepare_target(logits: torch.Tensor, target: torch.Tensor, settings: LossSettings) -> PreparedTarget:
    """Check ``target`` (B, 1, *spatial) against ``logits`` (B, K, *spatial) and build one-hot/region targets."""
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    if target.shape[0] != logits.shape[0] or target.shape[2:] != logits.shape[2:] or target.shape[1] != 1:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}")
    labels = target[:, 0].long()
    if settings.ignore_label is not None:
        valid_voxels = labels != settings.ignore_label
        labels = torch.where(valid_voxels, labels, torch.zeros_like(labels))
    else:
        valid_voxels = torch.ones_like(labels, dtype=torch.bool)
    valid = valid_voxels.unsqueeze(1).to(logits.dtype)
    if settings.use_regions:
        assert settings.regions is not None
        if logits.shape[1] != len(settings.regions):
            raise ValueError(f"{len(settings.regions)} regions need {len(settings.regions)} output channels")
        masks = []
        for region in settings.regions:
            members = torch.tensor(region, device=labels.device, dtype=labels.dtype)
            masks.append(torch.isin(labels, members))
        dense = torch.stack(masks, dim=1).to(logits.dtype)
    else:
        channels = logits.shape[1]
        if channels != settings.number_of_classes:
            raise ValueError(f"the loss expects {settings.number_of_classes} output channels, got {channels}")
        largest = int(labels.max()) if labels.numel() else 0
        if largest >= channels or (labels.numel() and int(labels.min()) < 0):
            raise ValueError(
                f"label value {largest if largest >= channels else int(labels.min())} is outside 0..{channels - 1}"
                " (and is not the ignore label): check the label maps"
            )
        dense = torch.zeros_like(logits).scatter_(1, labels.unsqueeze(1), 1.0)
    dense = dense * valid
    return PreparedTarget(labels, dense, valid, valid.sum().clamp_min(1.0))


def probabilities_of(logits: torch.Tensor, settings: LossSettings) -> torch.Tensor:
    """Softmax over classes, or an independent sigmoid per region."""
    return torch.sigmoid(logits) if settings.use_regions else torch.softmax(logits, dim=1)


def _overlap_statistics(
    probabilities: torch.Tensor, prepared: PreparedTarget, settings: LossSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft true positives, false positives, false negatives per (sample or batch, channel), background dropped.

    ``tp = sum p g``, ``fp = sum p (1 - g)``, ``fn = sum (1 - p) g`` over the valid voxels only.
    """
    probabilities = probabilities * prepared.valid
    target = prepared.dense_target
    if not settings.use_regions:  # channel 0 is background: not part of the Dice average
        probabilities = probabilities[:, 1:]
        target = target[:, 1:]
    axes = [0, *range(2, probabilities.ndim)] if settings.batch_dice else list(range(2, probabilities.ndim))
    true_positive = (probabilities * target).sum(dim=axes)
    predicted = probabilities.sum(dim=axes)
    actual = target.sum(dim=axes)
    return true_positive, predicted - true_positive, actual - true_positive


def soft_dice_loss(logits: torch.Tensor, prepared: PreparedTarget, settings: LossSettings) -> torch.Tensor:
    """``1 - mean_c (2 tp_c + s) / (2 tp_c + fp_c + fn_c + s)`` with ``s = 1e-5`` (Milletari et al. 2016)."""
    true_positive, false_positive, false_negative = _overlap_statistics(
        probabilities_of(logits, settings), prepared, settings
    )
    dice = (2 * true_positive + DICE_SMOOTHING) / (
        2 * true_positive + false_positive + false_negative + DICE_SMOOTHING
    ).clamp_min(1e-8)
    return 1 - dice.mean()


def generalized_dice_loss(logits: torch.Tensor, prepared: PreparedTarget, settings: LossSettings) -> torch.Tensor:
    """``1 - 2 sum_c w_c tp_c / sum_c w_c (2 tp_c + fp_c + fn_c)``, ``w_c = 1 / (sum g_c)^2`` (Sudre et al. 2017).

    The squared inverse volume weights make a small structure count as much as a large one. A class absent from the
    target (infinite weight) gets the largest finite weight of its row instead.
    """
    true_positive, false_positive, false_negative = _overlap_statistics(
        probabilities_of(logits, settings), prepared, settings
    )
    volume = true_positive + false_negative
    weights = 1.0 / volume.square()
    finite = torch.isfinite(weights)
    largest_finite = torch.where(finite, weights, torch.zeros_like(weights)).amax(dim=-1, keepdim=True)
    largest_finite = torch.where(largest_finite > 0, largest_finite, torch.ones_like(largest_finite))
    weights = torch.where(finite, weights, largest_finite).detach()
    numerator = 2 * (weights * true_positive).sum(dim=-1) + DICE_SMOOTHING
    denominator = (weights * (2 * true_positive + false_positive + false_negative)).sum(dim=-1) + DICE_SMOOTHING
    return 1 - (numerator / denominator.clamp_min(1e-8)).mean()


def tversky_loss(logits: torch.Tensor, prepared: PreparedTarget, settings: LossSettings) -> torch.Tensor:
    """``1 - mean_c (tp + s) / (tp + 0.3 fp + 0.7 fn + s)`` (Salehi et al. 2017): misses cost more than false alarms."""
    true_positive, false_positive, false_negative = _overlap_statistics(
        probabilities_of(logits, settings), prepared, settings
    )
    index = (true_positive + DICE_SMOOTHING) / (
        true_positive
        + TVERSKY_FALSE_POSITIVE_WEIGHT * false_positive
        + TVERSKY_FALSE_NEGATIVE_WEIGHT * false_negative
        + DICE_SMOOTHING
    ).clamp_min(1e-8)
    return 1 - index.mean()


def cross_entropy_map(logits: torch.Tensor, prepared: PreparedTarget, settings: LossSettings) -> torch.Tensor:
    """Per-voxel cross-entropy ``-log p_label`` (softmax) or mean binary CE over regions (sigmoid), (B, *spatial)."""
    if settings.use_regions:
        per_channel = F.binary_cross_entropy_with_logits(logits, prepared.dense_target, reduction="none")
        return per_channel.mean(dim=1)
    return F.cross_entropy(logits, prepared.labels, reduction="none")


def _mean_over_valid(voxel_losses: torch.Tensor, prepared: PreparedTarget) -> torch.Tensor:
    return (voxel_losses * prepared.valid[:, 0]).sum() / prepared.number_of_valid


def cross_entropy_loss(logits: torch.Tensor, prepared: PreparedTarget, settings: LossSettings) -> torch.Tensor:
    """Cross-entropy averaged over the valid (not ignored) voxels."""
    return _mean_over_valid(cross_entropy_map(logits, prepared, settings), prepared)


def top_k_cross_entropy_loss(logits: torch.Tensor, prepared: PreparedTarget, settings: LossSettings) -> torch.Tensor:
    """Mean cross-entropy of the hardest 10 % of valid voxels in the batch (Wu et al. 2016, "bootstrapped" CE)."""
    voxel_losses = cross_entropy_map(logits, prepared, settings).flatten()
    valid = prepared.valid[:, 0].flatten() > 0
    voxel_losses = voxel_losses[valid]
    if voxel_losses.numel() == 0:
        return logits.sum() * 0.0
    count = max(1, math.ceil(TOP_K_FRACTION * voxel_losses.numel()))
    return voxel_losses.topk(count, sorted=False).values.mean()


def focal_loss(logits: torch.Tensor, prepared: PreparedTarget, settings: LossSettings) -> torch.Tensor:
    """``mean -(1 - p_t)^2 log p_t`` over valid voxels (Lin et al. 2017): well-classified voxels fade out.

    Softmax: ``p_t`` is the probability of the true class. Regions: the same per sigmoid channel, averaged.
    """
    if settings.use_regions:
        binary = F.binary_cross_entropy_with_logits(logits, prepared.dense_target, reduction="none")
        probability_true = torch.exp(-binary)
        voxel_losses = ((1 - probability_true) ** FOCAL_GAMMA * binary).mean(dim=1)
    else:
        cross_entropy = F.cross_entropy(logits, prepared.labels, reduction="none")
        probability_true = torch.exp(-cross_entropy)
        voxel_losses = (1 - probability_true) ** FOCAL_GAMMA * cross_entropy
    return _mean_over_valid(voxel_losses, prepared)


def dice_plus_cross_entropy(logits: torch.Tensor, prepared: PreparedTarget, settings: LossSettings) -> torch.Tensor:
    """Soft Dice (no background) + cross-entropy, equal weights: the default."""
    return soft_dice_loss(logits, prepared, settings) + cross_entropy_loss(logits, prepared, settings)


def generalized_dice_plus_cross_entropy(
    logits: torch.Tensor, prepared: PreparedTarget, settings: LossSettings
) -> torch.Tensor:
    """Generalized Dice + cross-entropy."""
    return generalized_dice_loss(logits, prepared, settings) + cross_entropy_loss(logits, prepared, settings)


def tversky_plus_cross_entropy(logits: torch.Tensor, prepared: PreparedTarget, settings: LossSettings) -> torch.Tensor:
    """Tversky + cross-entropy."""
    return tversky_loss(logits, prepared, settings) + cross_entropy_loss(logits, prepared, settings)


SingleScaleLoss = Callable[[torch.Tensor, PreparedTarget, LossSettings], torch.Tensor]

LOSSES: dict[str, SingleScaleLoss] = {
    "dice_ce": dice_plus_cross_entropy,
    "generalized_dice_ce": generalized_dice_plus_cross_entropy,
    "tversky_ce": tversky_plus_cross_entropy,
    "focal": focal_loss,
    "topk_ce": top_k_cross_entropy_loss,
}


def deep_supervision_weights(number_of_outputs: int) -> list[float]:
    """``w_i = 1 / 2^i`` (i = 0 full resolution), the lowest resolution set to 0, normalised to sum 1.

    With a single output the weight is ``[1.0]``.
    """
    if number_of_outputs < 1:
        raise ValueError("deep supervision needs at least one output")
    if number_of_outputs == 1:
        return [1.0]
    weights = [1.0 / 2**index for index in range(number_of_outputs)]
    weights[-1] = 0.0
    total = sum(weights)
    return [weight / total for weight in weights]


class SegmentationLoss:
    """``loss(outputs, targets) -> scalar``; outputs one tensor or a deep-supervision list (full resolution first).

    ``targets`` is the matching list of (B, 1, *spatial) label tensors, or one tensor. If the network returns one
    tensor (eval mode) while ``targets`` is a list, the full-resolution target ``targets[0]`` is used. Scales with
    weight 0 are not computed.
    """

    def __init__(self, name: str, settings: LossSettings, weights: Sequence[float] | None) -> None:
        self.name = name
        self.settings = settings
        self.single_scale_loss = LOSSES[name]
        self.weights = None if weights is None else [float(weight) for weight in weights]

    def single_scale(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The named loss at one resolution, in float32.

        Under mixed precision the logits arrive as float16, whose largest value (65504) a voxel count of a 3D patch
        exceeds: Dice statistics summed in float16 would overflow to infinity.
        """
        logits = logits.float()
        return self.single_scale_loss(logits, prepare_target(logits, target, self.settings), self.settings)

    def __call__(
        self, outputs: torch.Tensor | Sequence[torch.Tensor], targets: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            target = targets if isinstance(targets, torch.Tensor) else targets[0]
            return self.single_scale(outputs, target)
        if isinstance(targets, torch.Tensor):
            raise ValueError("deep-supervision outputs need one target per output scale")
        if len(outputs) != len(targets):
            raise ValueError(f"{len(outputs)} outputs but {len(targets)} targets")
        weights = self.weights if self.weights is not None else deep_supervision_weights(len(outputs))
        if len(weights) != len(outputs):
            raise ValueError(f"{len(weights)} deep-supervision weights for {len(outputs)} outputs")
        total = None
        for weight, logits, target in zip(weights, outputs, targets, strict=True):
            if weight == 0:
                continue
            term = weight * self.single_scale(logits, target)
            total = term if total is None else total + term
        if total is None:
            raise ValueError("every deep-supervision weight is 0")
        return total


def build_loss(
    name: str = "dice_ce",
    *,
    num_classes: int,
    regions: Sequence[Sequence[int]] | None = None,
    ignore_label: int | None = None,
    batch_dice: bool = False,
    deep_supervision_weights: Sequence[float] | None = None,
    use_regions: bool | None = None,
) -> SegmentationLoss:
    """The named loss (see ``LOSSES``) as a callable over (deep-supervision) outputs and targets.

    Args:
        num_classes: softmax channels including background (ignored with regions).
        regions: label sets, one sigmoid output channel each (dataset.json regions, in ``regions_class_order``).
        ignore_label: label value whose voxels contribute nothing (sparse annotation).
        batch_dice: pool Dice statistics over the batch.
        deep_supervision_weights: one weight per output; ``None`` uses ``deep_supervision_weights(len(outputs))``.
        use_regions: region-based (sigmoid) training; defaults to ``regions is not None``.

    Raises ``UserError`` for an unknown name and ``ValueError`` for regions requested without regions.

    Example:
        >>> loss = build_loss("dice_ce", num_classes=3)
        >>> target = torch.zeros(2, 1, 8, 8, dtype=torch.long); target[:, :, 2:6, 2:4] = 1; target[:, :, 2:6, 4:6] = 2
        >>> undecided = torch.zeros(2, 3, 8, 8)  # equal logits for every class
        >>> confident = 10.0 * torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).float()
        >>> # cross-entropy (ln 3 when undecided) plus 1 - soft Dice, averaged over the foreground classes
        >>> round(loss(undecided, target).item(), 3), round(loss(confident, target).item(), 3)
        (1.917, 0.0)
    """
    if name not in LOSSES:
        raise UserError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    if use_regions is None:
        use_regions = regions is not None
    if use_regions and not regions:
        raise ValueError("region-based training needs the regions (label sets) declared in dataset.json")
    settings = LossSettings(
        number_of_classes=int(num_classes),
        regions=tuple(tuple(int(label) for label in region) for region in regions) if use_regions and regions else None,
        ignore_label=ignore_label,
        batch_dice=bool(batch_dice),
    )
    return SegmentationLoss(name, settings, deep_supervision_weights)
