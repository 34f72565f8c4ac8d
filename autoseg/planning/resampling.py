"""How preprocessing resamples images and labels to the target spacing of a configuration."""

from __future__ import annotations

from collections.abc import Sequence

from autoseg.planning.target_spacing import ANISOTROPY_RATIO


def plan_resampling(
    original_spacing: Sequence[float], target_spacing: Sequence[float], *, is_2d: bool
) -> dict:
    """Cubic B-spline for images and linear on one-hot for labels; a coarse axis separately with order 0.

    With slices more than 3x thicker than the in-plane pixels, a cubic spline across slices invents structure
    between images that are far apart and overshoots at tissue borders. Resampling then works slice by slice
    in-plane (order 3 / 1) and uses nearest neighbour (``coarse_axis_order`` 0) along the coarse axis. Whether a
    case gets that, and along which axis, is decided per case (``autoseg.transforms.resampling.separate_axis``, the
    reference's rule); ``anisotropic`` records it for the median case and the target spacing. 2D data has a single
    slice on axis 0: only the two in-plane axes are ever resampled.
    """
    anisotropic = False
    if not is_2d:
        for spacing in (original_spacing, target_spacing):
            anisotropic |= max(spacing) > ANISOTROPY_RATIO * min(spacing)
    return {"anisotropic": bool(anisotropic), "image_order": 3, "label_order": 1, "coarse_axis_order": 0}
