"""Training-time augmentation with batchgenerators: spatial, intensity, mirroring, at the reference's probabilities."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

from autoseg.errors import UserError

ANISOTROPIC_PATCH_RATIO = 3.0
# A 2D patch this much longer than wide is rotated by at most ``rotation_degrees_2d_elongated`` (the reference's rule).
ELONGATED_2D_PATCH_RATIO = 1.5


@dataclass(frozen=True)
class AugmentationSettings:
    """Probabilities and ranges of every augmentation (defaults: the reference's published values).

    Angles are in degrees, with the reference's rule (nnU-Net v2,
    ``configure_rotation_dummyDA_mirroring_and_inital_patch_size``): ``rotation_degrees_2d`` applies to 2D
    patches, ``rotation_degrees_2d_elongated`` to 2D patches whose long edge is more than 1.5x the short one,
    ``rotation_degrees_3d`` to 3D patches (about every axis) and ``rotation_degrees_in_plane`` to anisotropic
    ("dummy 2D") 3D patches, which rotate about axis 0 only.
    ``data_interpolation_order`` is the spline order used to resample images when a sample is rotated or scaled
    (labels always use nearest neighbour).
    """

    rotation_probability: float = 0.2
    rotation_degrees_2d: float = 180.0
    rotation_degrees_2d_elongated: float = 15.0
    rotation_degrees_3d: float = 30.0
    rotation_degrees_in_plane: float = 180.0
    scaling_probability: float = 0.2
    scaling_range: tuple[float, float] = (0.7, 1.4)
    noise_probability: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    blur_probability: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    brightness_probability: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    contrast_probability: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    low_resolution_probability: float = 0.25
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)
    gamma_probability: float = 0.3
    inverted_gamma_probability: float = 0.1
    gamma_range: tuple[float, float] = (0.7, 1.5)
    mirror: bool = True
    data_interpolation_order: int = 3

    def only_spatial(self) -> AugmentationSettings:
        """The same spatial settings with every intensity augmentation and mirroring off (for tests and debugging)."""
        return replace(
            self,
            noise_probability=0.0,
            blur_probability=0.0,
            brightness_probability=0.0,
            contrast_probability=0.0,
            low_resolution_probability=0.0,
            gamma_probability=0.0,
            inverted_gamma_probability=0.0,
            mirror=False,
        )

    def with_probabilities_scaled(self, factor: float) -> AugmentationSettings:
        """Every ``*_probability`` multiplied by ``factor`` (ranges, mirroring and interpolation unchanged)."""
        return replace(self, **{field.name: getattr(self, field.name) * factor for field in fields(self)
                                if field.name.endswith("_probability")})


# Named strengths of augmentation. "reference" is the published pipeline, made for 250,000 GPU steps. "light" halves
# every probability and resamples rotated or scaled images linearly instead of with cubic splines (the spatial
# transform dominates the augmentation's CPU time, which competes with training on a small CPU); "mirror" keeps only
# mirroring.
AUGMENTATION_PRESETS: dict[str, AugmentationSettings] = {
    "reference": AugmentationSettings(),
    "light": replace(AugmentationSettings().with_probabilities_scaled(0.5), data_interpolation_order=1),
    "mirror": AugmentationSettings().with_probabilities_scaled(0.0),
}


def augmentation_preset(name: str) -> AugmentationSettings:
    """The ``AUGMENTATION_PRESETS`` entry called ``name`` (a ``UserError`` naming the choices otherwise)."""
    if name not in AUGMENTATION_PRESETS:
        raise UserError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATION_PRESETS)}.")
    return AUGMENTATION_PRESETS[name]


def is_anisotropic_patch(patch_size: Sequence[int]) -> bool:
    """True for a 3D patch whose longest edge is more than 3x its axis 0: augment in-plane only ("dummy 2D").

    The coarse axis is axis 0 (plans put the coarsest spacing first), so in-plane means axes 1 and 2. Rotating
    such a patch out of plane would interpolate across a handful of thick slices and invent anatomy. The test
    looks at axis 0 only, as the reference's does: a patch short along an in-plane axis (``32 x 8 x 32``) has
    no thick-slice axis to protect, and rotating it "in-plane" would still mix its 32 slices.
    """
    return len(patch_size) == 3 and max(patch_size) / patch_size[0] > ANISOTROPIC_PATCH_RATIO


def _rotation_extent(patch_size: Sequence[int], max_degrees: float) -> np.ndarray:
    """Bounding-box size of the patch rotated by any angle in [-max, max] about every axis (a dense angle grid)."""
    half = np.asarray(patch_size, dtype=float) / 2
    corners = np.array(list(itertools.product(*[(-h, h) for h in half])))
    limit = math.radians(min(max_degrees, 180.0))
    angles = np.unique(
        np.concatenate([np.linspace(-limit, limit, 37), [a for a in np.radians([-90, -45, 45, 90]) if abs(a) <= limit]])
    )
    extent = np.asarray(patch_size, dtype=float)
    if len(patch_size) == 2:
        for angle in angles:
            rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            rotated = corners @ rotation.T
            extent = np.maximum(extent, rotated.max(axis=0) - rotated.min(axis=0))
        return extent
    coarse = angles[:: max(1, len(angles) // 9)]
    for a, b, c in itertools.product(coarse, coarse, coarse):
        rotation = _rotation_matrix_3d(a, b, c)
        rotated = corners @ rotation.T
        extent = np.maximum(extent, rotated.max(axis=0) - rotated.min(axis=0))
    return extent


def _rotation_matrix_3d(about_axis_0: float, about_axis_1: float, about_axis_2: float) -> np.ndarray:
    c0, s0 = math.cos(about_axis_0), math.sin(about_axis_0)
    c1, s1 = math.cos(about_axis_1), math.sin(about_axis_1)
    c2, s2 = math.cos(about_axis_2), math.sin(about_axis_2)
    rotate_0 = np.array([[1, 0, 0], [0, c0, -s0], [0, s0, c0]])
    rotate_1 = np.array([[c1, 0, s1], [0, 1, 0], [-s1, 0, c1]])
    rotate_2 = np.array([[c2, -s2, 0], [s2, c2, 0], [0, 0, 1]])
    return rotate_2 @ rotate_1 @ rotate_0


def rotation_degrees(patch_size: Sequence[int], settings: AugmentationSettings) -> float:
    """The rotation range for this patch, the reference's rule.

    2D: ``rotation_degrees_2d`` (180), or ``rotation_degrees_2d_elongated`` (15) when the patch's long edge is
    more than 1.5x its short one (a full turn would put the long edge where the image is narrow). 3D:
    ``rotation_degrees_in_plane`` (180) about axis 0 for anisotropic patches, which stay square-ish in-plane,
    else ``rotation_degrees_3d`` (30) about every axis.
    """
    if len(patch_size) == 2:
        elongated = max(patch_size) / min(patch_size) > ELONGATED_2D_PATCH_RATIO
        return settings.rotation_degrees_2d_elongated if elongated else settings.rotation_degrees_2d
    return settings.rotation_degrees_in_plane if is_anisotropic_patch(patch_size) else settings.rotation_degrees_3d


def sampled_patch_size(patch_size: Sequence[int], settings: AugmentationSettings | None) -> list[int]:
    """Size of the region to cut out so that rotation and scaling of the final patch never reach past it.

    Rotation by up to the allowed angle needs the rotated box's bounding extent; scaling by ``s`` reads a region
    ``s`` times larger (batchgenerators multiplies the sampling grid by ``s``), so the extent is multiplied by the
    largest scale. The margin on each axis is made even so that the final patch sits exactly in the middle (no
    half-voxel shift). Without augmentation (``settings=None``) it is the patch itself. For anisotropic patches the
    coarse axis 0 is not enlarged.
    """
    patch = [int(size) for size in patch_size]
    if settings is None or (settings.rotation_probability <= 0 and settings.scaling_probability <= 0):
        return patch
    in_plane_only = is_anisotropic_patch(patch)
    spatial = patch[1:] if in_plane_only else patch
    extent = np.asarray(spatial, dtype=float)
    if settings.rotation_probability > 0:
        extent = _rotation_extent(spatial, rotation_degrees(patch, settings))
    if settings.scaling_probability > 0:
        extent = extent * max(1.0, settings.scaling_range[1])
    enlarged = [max(size, math.ceil(value - 1e-6)) for size, value in zip(spatial, extent, strict=True)]
    enlarged = [value + ((value - size) % 2) for size, value in zip(spatial, enlarged, strict=True)]
    return [patch[0], *enlarged] if in_plane_only else enlarged


class InPlaneSpatialTransform(AbstractTransform):
    """Apply a 2D ``SpatialTransform`` to every slice of axis 0 of a 3D batch with the same parameters per sample.

    (B, C, z, y, x) is viewed as (B, C*z, y, x), transformed in 2D and viewed back, so rotation and scaling act
    in the (y, x) plane only and slices never mix.
    """

    def __init__(self, spatial_transform_2d: SpatialTransform) -> None:
        self.spatial_transform_2d = spatial_transform_2d

    def __call__(self, **data_dict):
        data, seg = data_dict["data"], data_dict.get("seg")
        batch, channels, depth = data.shape[:3]
        data_dict["data"] = data.reshape(batch, channels * depth, *data.shape[3:])
        if seg is not None:
            data_dict["seg"] = seg.reshape(batch, seg.shape[1] * depth, *seg.shape[3:])
        data_dict = self.spatial_transform_2d(**data_dict)
        data_dict["data"] = data_dict["data"].reshape(batch, channels, depth, *data_dict["data"].shape[2:])
        if seg is not None:
            data_dict["seg"] = data_dict["seg"].reshape(batch, seg.shape[1], depth, *data_dict["seg"].shape[2:])
        return data_dict


def spatial_transform(patch_size: Sequence[int], settings: AugmentationSettings) -> AbstractTransform:
    """batchgenerators' ``SpatialTransform`` (centre crop of the sampled region), in-plane for anisotropic patches.

    With probability ``rotation_probability`` every axis' angle is uniform in ``[-max, max]`` (one in-plane angle in
    2D and for anisotropic patches); with probability ``scaling_probability`` the sampling grid is scaled by one
    factor for all axes. Images are resampled with ``data_interpolation_order`` splines, labels by nearest neighbour;
    both are 0 outside the sampled region (which ``sampled_patch_size`` makes large enough never to be reached).
    """
    in_plane_only = is_anisotropic_patch(patch_size)
    spatial_patch = list(patch_size[1:]) if in_plane_only else list(patch_size)
    angle = math.radians(rotation_degrees(patch_size, settings))
    angle_range = (-angle, angle)
    transform = SpatialTransform(
        spatial_patch,
        patch_center_dist_from_border=None,
        do_elastic_deform=False,
        do_rotation=settings.rotation_probability > 0,
        angle_x=angle_range,
        angle_y=angle_range,
        angle_z=angle_range,
        p_rot_per_axis=1,
        do_scale=settings.scaling_probability > 0,
        scale=settings.scaling_range,
        border_mode_data="constant",
        border_cval_data=0,
        order_data=settings.data_interpolation_order,
        border_mode_seg="constant",
        border_cval_seg=0,
        order_seg=0,
        random_crop=False,
        p_rot_per_sample=settings.rotation_probability,
        p_scale_per_sample=settings.scaling_probability,
        p_el_per_sample=0,
        independent_scale_for_each_axis=False,
    )
    return InPlaneSpatialTransform(transform) if in_plane_only else transform


def build_training_transforms(patch_size: Sequence[int], settings: AugmentationSettings) -> list[AbstractTransform]:
    """The augmentation pipeline, in the reference's order, for batches cut at ``sampled_patch_size``.

    Spatial (rotation, scaling, centre crop to ``patch_size``) -> Gaussian noise -> Gaussian blur -> brightness ->
    contrast -> low-resolution simulation -> gamma on the inverted image -> gamma -> mirroring on every axis.
    Intensity transforms act per sample with the listed probabilities; low-resolution simulation skips the coarse axis
    of anisotropic patches.
    """
    transforms = [spatial_transform(patch_size, settings)]
    transforms += _noise_transforms(settings)
    transforms += _brightness_and_contrast_transforms(settings)
    transforms += _low_resolution_transforms(settings, in_plane_only=is_anisotropic_patch(patch_size))
    transforms += _gamma_transforms(settings)
    if settings.mirror:
        transforms.append(MirrorTransform(tuple(range(len(patch_size)))))
    return transforms


def _noise_transforms(settings: AugmentationSettings) -> list[AbstractTransform]:
    """Gaussian noise, then Gaussian blur (a random half of the channels, each with its own sigma)."""
    transforms: list[AbstractTransform] = []
    if settings.noise_probability > 0:
        transforms.append(
            GaussianNoiseTransform(noise_variance=settings.noise_variance, p_per_sample=settings.noise_probability)
        )
    if settings.blur_probability > 0:
        transforms.append(
            GaussianBlurTransform(
                settings.blur_sigma,
                different_sigma_per_channel=True,
                p_per_sample=settings.blur_probability,
                p_per_channel=0.5,
            )
        )
    return transforms


def _brightness_and_contrast_transforms(settings: AugmentationSettings) -> list[AbstractTransform]:
    """Multiplicative brightness, then contrast (values spread about their mean)."""
    transforms: list[AbstractTransform] = []
    if settings.brightness_probability > 0:
        transforms.append(
            BrightnessMultiplicativeTransform(
                multiplier_range=settings.brightness_range, p_per_sample=settings.brightness_probability
            )
        )
    if settings.contrast_probability > 0:
        transforms.append(
            ContrastAugmentationTransform(
                contrast_range=settings.contrast_range, p_per_sample=settings.contrast_probability
            )
        )
    return transforms


def _low_resolution_transforms(settings: AugmentationSettings, *, in_plane_only: bool) -> list[AbstractTransform]:
    """Simulated low resolution (down nearest, up cubic), never along the coarse axis of an anisotropic patch, which is
    coarse already."""
    if settings.low_resolution_probability <= 0:
        return []
    return [
        SimulateLowResolutionTransform(
            zoom_range=settings.low_resolution_zoom,
            per_channel=True,
            p_per_channel=0.5,
            order_downsample=0,
            order_upsample=3,
            p_per_sample=settings.low_resolution_probability,
            ignore_axes=(0,) if in_plane_only else None,
        )
    ]


def _gamma_transforms(settings: AugmentationSettings) -> list[AbstractTransform]:
    """Gamma on the inverted image, then on the image itself; both keep each channel's mean and standard deviation."""
    transforms: list[AbstractTransform] = []
    for invert_image, probability in ((True, settings.inverted_gamma_probability), (False, settings.gamma_probability)):
        if probability > 0:
            transforms.append(
                GammaTransform(
                    settings.gamma_range,
                    invert_image=invert_image,
                    per_channel=True,
                    retain_stats=True,
                    p_per_sample=probability,
                )
            )
    return transforms


class DeepSupervisionTargets(AbstractTransform):
    """Replace ``seg`` (B, 1, *patch) by a list with one nearest-neighbour downsampled copy per output scale.

    Scales are ``1 / prod(strides)`` per axis, and strides are whole numbers: an integer step slice
    (``seg[..., ::2, ::2]``) is nearest-neighbour downsampling whose size matches the network's outputs.
    """

    def __init__(self, scales: Sequence[Sequence[float]]) -> None:
        self.scales = [[float(value) for value in scale] for scale in scales]

    def __call__(self, **data_dict):
        seg = data_dict["seg"]
        data_dict["seg"] = [downsample_nearest(seg, scale) for scale in self.scales]
        return data_dict


def downsample_nearest(seg: np.ndarray, scale: Sequence[float]) -> np.ndarray:
    """Every ``1 / scale``-th voxel of each spatial axis of a (B, C, *spatial) array, starting at the first.

    That keeps ``ceil(size * scale)`` voxels per axis, as many as a convolution of that stride (odd kernel, "same"
    padding) outputs. A scale that is not 1 / a whole number is a ``ValueError``: no network stride makes one.
    """
    steps = [round(1 / value) for value in scale]
    if any(abs(step - 1 / value) > 1e-6 for step, value in zip(steps, scale, strict=True)):
        raise ValueError(f"deep-supervision scale {list(scale)} is not 1 / a whole number per axis")
    if all(step == 1 for step in steps):
        return seg
    return np.ascontiguousarray(seg[(slice(None), slice(None), *(slice(None, None, step) for step in steps))])


def compose(transforms: Sequence[AbstractTransform]) -> Compose:
    """batchgenerators ``Compose`` of the given transforms (an empty list is the identity)."""
    return Compose(list(transforms))
