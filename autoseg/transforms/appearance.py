"""Generic acquisition changes of an image: what the quality estimate's calibration sees besides clean cases.

Cross-validation cases look like the training cases, so their quality scores cover only the top of the range; new
images from another scanner score lower, where a calibration fitted on clean cases can only guess. Model selection
therefore also scores one changed copy of some validation cases (``autoseg.pipeline.validation``). The changes are
deliberately generic (none models a particular modality): with intensities mapped to [0, 1] by their 0.5-99.5
percentiles, at ``strength`` s in [0, 1]

    resolution loss   Gaussian blur of sigma 1.5 s times the finest spacing (mm), per axis in voxels
    gamma             intensities raised to exp(+-0.6 s)
    contrast          deviations from the mean scaled by 1 +- 0.4 s
    noise             additive Gaussian noise of sigma 0.1 s

and mapped back to the image's range.

Example:
    >>> image = np.linspace(0, 100, 4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    >>> changed = perturb_appearance(image, np.random.default_rng(0), strength=1.0, spacing=(3.0, 1.0, 1.0))
    >>> changed.shape, changed.dtype, bool(np.abs(changed - image).mean() > 1)
    ((4, 8, 8), dtype('float32'), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def perturb_appearance(
    image: np.ndarray, rng: np.random.Generator, *, strength: float, spacing: Sequence[float]
) -> np.ndarray:
    """``image`` ``(z, y, x)`` with its acquisition changed at ``strength`` (see the module's docstring)."""
    low, high = np.percentile(image, [0.5, 99.5])
    scale = max(float(high - low), 1e-6)
    unit = np.clip((image.astype(np.float64) - low) / scale, 0.0, None)
    sigma_mm = 1.5 * strength * min(spacing)
    unit = ndimage.gaussian_filter(unit, [sigma_mm / step if size > 1 else 0.0
                                          for step, size in zip(spacing, image.shape, strict=True)])
    unit = unit ** np.exp(rng.choice([-1.0, 1.0]) * 0.6 * strength)
    contrast = 1.0 + rng.choice([-1.0, 1.0]) * 0.4 * strength
    unit = unit.mean() + contrast * (unit - unit.mean())
    unit = unit + rng.normal(0.0, 0.1 * strength, unit.shape)
    return (unit * scale + low).astype(np.float32)
