"""A readable text table of plans, one block per configuration (``autoseg plan --show``)."""

from __future__ import annotations

from collections.abc import Sequence

from autoseg.records.compute_plan import ComputePlan
from autoseg.records.configuration_parts import NormalizationScheme
from autoseg.records.plans import Configuration, Plans


def _shape(values: list) -> str:
    return " x ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _per_stage(values: Sequence[Sequence[int]]) -> str:
    return " ".join("x".join(str(v) for v in entry) for entry in values)


def _normalization(entries: Sequence[NormalizationScheme]) -> str:
    described = []
    for entry in entries:
        if entry.scheme == "ct":
            described.append(
                f"ct clip [{entry.clip_low:g}, {entry.clip_high:g}] mean {entry.mean:g} std {entry.std:g}"
            )
        elif entry.scheme == "zscore":
            described.append("zscore" + (" in mask" if entry.use_mask else ""))
        else:
            described.append(entry.scheme)
    return "; ".join(described)


def configuration_rows(configuration: Configuration) -> list[tuple[str, str]]:
    """(label, value) rows describing one resolved configuration."""
    network = configuration.network
    dimension = configuration.dimension
    spacing = configuration.spacing[-dimension:]
    resampling = configuration.resampling
    rows = [
        ("dimension", f"{dimension}D"),
        ("spacing (mm)", _shape([round(v, 4) for v in spacing])),
        ("median image", _shape(list((configuration.median_shape or ())[-dimension:]))),
        ("patch", _shape(list(configuration.patch_size))),
        ("batch", str(configuration.batch_size)),
        ("network", f"{network.architecture}, {network.number_of_stages} stages"),
        ("features", " ".join(str(v) for v in network.features_per_stage)),
        ("kernels", _per_stage(network.kernel_sizes)),
        ("strides", _per_stage(network.strides)),
        ("encoder blocks", " ".join(str(v) for v in network.blocks_per_stage_encoder)),
        ("decoder convs", " ".join(str(v) for v in network.convs_per_stage_decoder)),
        ("normalisation", _normalization(configuration.normalization)),
        ("resampling", ("anisotropic (coarse axis order "
                        f"{resampling.coarse_axis_order}), " if resampling.anisotropic else "")
         + f"image order {resampling.image_order}, label order {resampling.label_order}"),
        ("batch dice", "yes" if configuration.batch_dice else "no"),
    ]
    if configuration.previous_stage:
        rows.append(("previous stage", configuration.previous_stage))
    if configuration.estimated_memory_gb is not None:  # absent from hand-written plans
        rows.append(("est. memory", f"{configuration.estimated_memory_gb:.2f} GB"))
    return rows


def format_plans_table(plans: Plans) -> str:
    """The whole plan as text: a header line, then one aligned block per configuration."""
    lines = [
        f"{plans.get('dataset_name')}: preset {plans.get('preset')}, budget {plans.get('gpu_memory_gb'):g} GB "
        f"({plans.get('training_precision', 'mixed')} precision), axis order {list(plans.transpose_forward)}",
    ]
    if plans.compute is not None:
        lines.extend(format_compute(plans.compute))
    for name, configuration in plans.configurations.items():
        inherits = f"  (inherits from {plans.parents[name]})" if name in plans.parents else ""
        lines.append("")
        lines.append(f"[{name}]{inherits}")
        for label, value in configuration_rows(configuration):
            lines.append(f"  {label:<15s} {value}")
    return "\n".join(lines) + "\n"


def format_compute(compute: ComputePlan) -> list[str]:
    """The time budget's reasoning (``compute`` in plans.json): what trains, how many steps, and why."""
    folds = ", ".join(str(fold) for fold in compute.folds)
    budget = f"{compute.budget_seconds / 60:.0f} min" if compute.budget_seconds is not None else "unknown"
    lines = [
        f"fitted to a time budget of {budget} on {compute.device}: about "
        f"{compute.training_seconds / 60:.0f} min of training, {' + '.join(compute.configurations)} on "
        f"fold(s) {folds}, {compute.seconds_per_fold / 60:.0f} min each (target {compute.target_iterations} "
        "steps per fold)",
    ]
    lines.extend(f"  why: {reason}" for reason in compute.reasons)
    for name, cost in compute.per_configuration.items():
        expected = f", expected Dice about {cost.expected_dice:.2f}" if cost.expected_dice is not None else ""
        lines.append(f"  {name}: about {cost.expected_seconds_per_iteration:.2f} s per step, "
                     f"{cost.expected_iterations} steps{expected}; {'; '.join(cost.choices)}")
        lines.extend(f"    recipe: {reason}" for reason in cost.recipe_reasons)
    return lines
