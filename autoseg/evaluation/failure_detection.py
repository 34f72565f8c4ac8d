"""How well a per-case quality score detects failed predictions: risk-coverage, AURC, AUROC, rank correlation.

A score is useful when the cases it trusts most are the good ones. Sort cases by the score, highest first, and keep
the first ``k`` ("coverage" k / n): the *risk* at that coverage is the mean of ``1 - Dice`` over the kept cases. The
area under this risk-coverage curve (AURC, Zenk et al., MedIA 2025) is low when the score ranks the failures last.
AUROC is the probability that a failure (Dice below ``failure_fraction`` x the
median Dice) scores lower than a success. Cases with equal scores count in random order (each at the mean risk of
its tie group), so a constant score's AURC is the mean risk: it earns nothing, by luck or otherwise.

Example:
    >>> dice = [0.9, 0.8, 0.3, 0.95]
    >>> round(aurc([0.9, 0.8, 0.2, 0.99], dice), 3), round(aurc([0.5] * 4, dice), 3)
    (0.126, 0.262)
    >>> failure_auroc([0.9, 0.8, 0.2, 0.99], dice)
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from scipy.optimize import isotonic_regression

FAILURE_FRACTION = 0.8  # a failure: Dice below this fraction of the median Dice


def risk_coverage(scores: Sequence[float], dice: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Coverage ``k / n`` and the mean risk ``1 - Dice`` of the ``k`` highest-scoring cases, for ``k = 1..n``.
    Cases with equal scores each carry their group's mean risk (the expectation over random tie orders)."""
    scores, dice = np.asarray(scores, dtype=float), np.asarray(dice, dtype=float)
    order = np.argsort(-scores, kind="stable")
    risks = 1.0 - dice[order]
    _, group, counts = np.unique(scores[order], return_inverse=True, return_counts=True)
    risks = (np.bincount(group, weights=risks) / counts)[group]
    kept = np.arange(1, len(risks) + 1)
    return kept / len(risks), np.cumsum(risks) / kept


def aurc(scores: Sequence[float], dice: Sequence[float]) -> float:
    """Area under the risk-coverage curve (mean of the risks at every coverage); lower is better."""
    _, risks = risk_coverage(scores, dice)
    return float(risks.mean())


def failures(dice: Sequence[float], *, failure_fraction: float = FAILURE_FRACTION) -> np.ndarray:
    """Which cases failed: Dice below ``failure_fraction`` x the median Dice."""
    dice = np.asarray(dice, dtype=float)
    return dice < failure_fraction * float(np.median(dice))


def failure_auroc(scores: Sequence[float], dice: Sequence[float], *,
                  failure_fraction: float = FAILURE_FRACTION) -> float | None:
    """AUROC of ``-score`` for detecting failures (None when there are no failures or no successes)."""
    failed = failures(dice, failure_fraction=failure_fraction)
    scores = np.asarray(scores, dtype=float)
    if failed.all() or not failed.any():
        return None
    u_statistic = stats.mannwhitneyu(scores[~failed], scores[failed], alternative="two-sided").statistic
    return float(u_statistic / (failed.sum() * (~failed).sum()))


def spearman(scores: Sequence[float], dice: Sequence[float]) -> float | None:
    """Spearman rank correlation of score and Dice (None for a constant score)."""
    if np.ptp(np.asarray(scores, dtype=float)) == 0:
        return None
    return float(stats.spearmanr(scores, dice).statistic)


def fit_monotone_map(scores: Sequence[float], dice: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Isotonic (non-decreasing) regression of Dice on the score: knots ``(scores, expected Dice)``, one per
    distinct score, ready for ``np.interp`` (``autoseg.records.quality_model.QualityModel``)."""
    scores, dice = np.asarray(scores, dtype=float), np.asarray(dice, dtype=float)
    knots, group, counts = np.unique(scores, return_inverse=True, return_counts=True)
    means = np.bincount(group, weights=dice) / counts  # ties first pooled into their mean
    fitted = isotonic_regression(means, weights=counts.astype(float), increasing=True).x
    return tuple(float(knot) for knot in knots), tuple(float(value) for value in fitted)
