"""What happens after a fold has trained, e.g. predicting its validation cases (``autoseg.pipeline.validation``).

Hooks are named functions ``hook(fold_folder, *, ...) -> dict | None`` that the caller hands to the loop in
``TrainingComponents.after_training_hooks``; their results are stored in ``training_summary.json``. Training itself
knows no inference or evaluation: the pipeline above it supplies the hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

AfterTrainingHook = Callable[..., "dict[str, Any] | None"]


def after_training(
    fold_folder: Path, *, hooks: Sequence[str], available: Mapping[str, AfterTrainingHook], **context: Any
) -> dict:
    """Run the named hooks (looked up in ``available``) in order; return ``{hook name: result}``.

    The final checkpoint is already on disk when hooks run, so a failing hook must not turn a finished training into
    a failed one: its error is recorded as ``{"failed": message}`` and the next hook runs.
    """
    results: dict[str, Any] = {}
    for name in hooks:
        try:
            results[name] = available[name](fold_folder, **context)
        except Exception as error:
            results[name] = {"failed": f"{type(error).__name__}: {error}"}
    return results
