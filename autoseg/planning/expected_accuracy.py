"""What a budget-fitted variant is expected to score: the labels its grid keeps, times what its steps can learn.

When no variant of a configuration reaches the target steps with a grid that keeps every class (the rule of
``autoseg.planning.layout``), the planner weighs resolution against steps with this model:

    expected Dice = mean over foreground classes of (round-trip Dice of the class on the grid) x learned(steps)
    learned(steps) = 1 - LEARNING_GAP_AT_REFERENCE x (steps / REFERENCE_STEPS) ** -LEARNING_EXPONENT   (at least 0)

The round-trip Dice is measured on the training labels (``autoseg.fingerprint.resolution``): the ceiling a model on
that grid can reach, per class, so a small class that a coarse grid smears lowers the mean by its share instead of
vetoing the grid. ``learned`` is the share of its converged Dice that a run of ``steps`` reaches when the learning
rate decays over exactly those steps; the constants are fitted to Hippocampus fold 0 runs of 300, about 1900 and 5300
steps (docs/planning.md, "Resolution against steps"). The model does not see context: candidates whose patch covers
less of the image than the reference's ``3d_lowres`` rule asks are not offered (``autoseg.planning.layout``).
"""

from __future__ import annotations

from collections.abc import Mapping

REFERENCE_STEPS = 300
LEARNING_GAP_AT_REFERENCE = 0.233  # 1 - learned(300): fold 0 scored 0.679 of a converged ~0.885
LEARNING_EXPONENT = 1.09  # the gap at 5300 steps was 0.010


def learned_share(steps: float) -> float:
    """The share of its converged Dice a run of ``steps`` is expected to reach (0 for no steps)."""
    if steps <= 0:
        return 0.0
    return max(0.0, 1.0 - LEARNING_GAP_AT_REFERENCE * (steps / REFERENCE_STEPS) ** -LEARNING_EXPONENT)


def expected_dice(label_dice: Mapping[int, float], steps: float) -> float:
    """Mean over classes of the grid's round-trip Dice (an empty mapping: the full grid, 1.0), times ``learned``."""
    ceiling = sum(label_dice.values()) / len(label_dice) if label_dice else 1.0
    return ceiling * learned_share(steps)
