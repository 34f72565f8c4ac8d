"""Read and write medical and 2D images with their geometry.

Arrays are always 3D in numpy order ``(z, y, x)``; ``Geometry.spacing`` follows the same order (the reverse of
SimpleITK's ``(x, y, z)``). A 2D image (PNG/BMP/TIFF, or a 1xHxW NIfTI) is a ``(1, H, W)`` array, so every later
stage handles 2D and 3D data the same way. Natural 2D images get a nominal spacing of 1 in-plane and
``NATURAL_2D_SLICE_SPACING`` across slices.

Example:
    >>> image = read_image("case_0000.nii.gz")  # doctest: +SKIP
    >>> write_image(image.array > 0, image.geometry, "mask.nii.gz")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.errors import ImageReadError, UserError
from autoseg.utils.files import atomic_path

# Longest match first: ".nii.gz" before ".gz".
MEDICAL_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
NATURAL_2D_ENDINGS = (".png", ".bmp", ".tif", ".tiff")
IMAGE_ENDINGS = MEDICAL_ENDINGS + NATURAL_2D_ENDINGS
NATURAL_2D_SLICE_SPACING = 999.0


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where an array's voxels sit in physical space, in numpy axis order ``(z, y, x)``.

    Attributes:
        spacing: voxel size in mm per array axis.
        origin: physical position of voxel (0, 0, 0), SimpleITK order (x, y, z).
        direction: 3x3 direction cosines, row-major, SimpleITK order.
        shape: array shape ``(z, y, x)``.
        is_2d_file: the file itself was 2D (PNG, 2D NRRD...), so it is written back as 2D.
    """

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    shape: tuple[int, int, int]
    is_2d_file: bool = False

    def to_dict(self) -> dict:
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "shape": list(self.shape),
            "is_2d_file": self.is_2d_file,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Geometry:
        return cls(
            spacing=tuple(float(v) for v in data["spacing"]),
            origin=tuple(float(v) for v in data["origin"]),
            direction=tuple(float(v) for v in data["direction"]),
            shape=tuple(int(v) for v in data["shape"]),
            is_2d_file=bool(data.get("is_2d_file", False)),
        )

    @property
    def is_2d(self) -> bool:
        """One slice along the first axis: the data is 2D whether it came from a PNG or a 1xHxW NIfTI."""
        return self.shape[0] == 1


@dataclasses.dataclass
class Image:
    """A ``(z, y, x)`` array and its geometry."""

    array: np.ndarray
    geometry: Geometry


def file_ending(path: str | os.PathLike[str]) -> str | None:
    """The supported image ending of ``path`` (lower-cased), or None."""
    name = Path(path).name.lower()
    for ending in IMAGE_ENDINGS:
        if name.endswith(ending):
            return ending
    return None


def _require_ending(path: Path) -> str:
    ending = file_ending(path)
    if ending is None:
        raise ImageReadError(
            f"{path}: unsupported file ending; supported endings are {', '.join(IMAGE_ENDINGS)}."
        )
    return ending


def _geometry_from_sitk(image: sitk.Image, path: Path) -> Geometry:
    dimension = image.GetDimension()
    size = image.GetSize()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per pixel (e.g. RGB); "
            "store each channel as its own single-channel file (CASE_0000, CASE_0001, ...)."
        )
    if dimension == 2:
        spacing_xy = image.GetSpacing()
        origin_xy = image.GetOrigin()
        d = image.GetDirection()
        is_natural = file_ending(path) in NATURAL_2D_ENDINGS
        return Geometry(
            spacing=(NATURAL_2D_SLICE_SPACING if is_natural else 1.0, float(spacing_xy[1]), float(spacing_xy[0])),
            origin=(float(origin_xy[0]), float(origin_xy[1]), 0.0),
            direction=(d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0),
            shape=(1, int(size[1]), int(size[0])),
            is_2d_file=True,
        )
    if dimension == 3:
        spacing = image.GetSpacing()
        return Geometry(
            spacing=(float(spacing[2]), float(spacing[1]), float(spacing[0])),
            origin=tuple(float(v) for v in image.GetOrigin()),
            direction=tuple(float(v) for v in image.GetDirection()),
            shape=(int(size[2]), int(size[1]), int(size[0])),
        )
    raise ImageReadError(
        f"{path}: is {dimension}D but a single-channel 2D or 3D image is expected "
        "(split 4D multi-channel files into one file per channel, e.g. with `autoseg convert-msd`)."
    )


def _read_sitk(path: Path, header_only: bool) -> sitk.Image:
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found.")
    try:
        if header_only:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            return reader
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reader error"
        raise ImageReadError(f"{path}: cannot be read (truncated or corrupt file?): {first_line}") from None


def read_image_header(path: str | os.PathLike[str]) -> Geometry:
    """Read only the geometry of an image file, without its voxels (fast)."""
    path = Path(path)
    _require_ending(path)
    reader = _read_sitk(path, header_only=True)
    dimension = reader.GetDimension()
    size = reader.GetSize()
    if reader.GetNumberOfComponents() != 1:
        raise ImageReadError(
            f"{path}: has {reader.GetNumberOfComponents()} components per pixel (e.g. RGB); "
            "store each channel as its own single-channel file (CASE_0000, CASE_0001, ...)."
        )
    # Build a 1-voxel stand-in with the same header so the geometry logic lives in one place.
    stand_in = sitk.Image([1] * dimension, sitk.sitkUInt8)
    stand_in.SetSpacing(reader.GetSpacing())
    stand_in.SetOrigin(reader.GetOrigin())
    stand_in.SetDirection(reader.GetDirection())
    geometry = _geometry_from_sitk(stand_in, path)
    shape = (1, int(size[1]), int(size[0])) if dimension == 2 else (int(size[2]), int(size[1]), int(size[0]))
    return dataclasses.replace(geometry, shape=shape)


def read_image(path: str | os.PathLike[str]) -> Image:
    """Read one single-channel image as a ``(z, y, x)`` array with its geometry.

    Raises:
        ImageReadError: the file is missing, unreadable, multi-component or not 2D/3D.
    """
    path = Path(path)
    _require_ending(path)
    image = _read_sitk(path, header_only=False)
    geometry = _geometry_from_sitk(image, path)
    array = sitk.GetArrayFromImage(image)
    return Image(array=array.reshape(geometry.shape), geometry=geometry)


def _natural_dtype(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8 or array.dtype == np.uint16:
        return array
    if array.min(initial=0) >= 0 and array.max(initial=0) <= 255:
        return array.astype(np.uint8)
    if array.min(initial=0) >= 0 and array.max(initial=0) <= 65535:
        return array.astype(np.uint16)
    raise UserError("PNG/BMP/TIFF output needs values in 0..65535; write a NIfTI file instead.")


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike[str]) -> None:
    """Write a ``(z, y, x)`` array with ``geometry`` atomically; the format follows the file ending.

    The written file has exactly the spacing, origin and direction in ``geometry``. Arrays from 2D files
    are written back as 2D images.
    """
    path = Path(path)
    ending = _require_ending(path)
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    if geometry.is_2d_file or ending in NATURAL_2D_ENDINGS:
        if ending in NATURAL_2D_ENDINGS:
            array = _natural_dtype(array)
        image = sitk.GetImageFromArray(array[0])
        image.SetSpacing((geometry.spacing[2], geometry.spacing[1]))
        image.SetOrigin(geometry.origin[:2])
        d = geometry.direction
        image.SetDirection((d[0], d[1], d[3], d[4]))
    else:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(tuple(reversed(geometry.spacing)))
        image.SetOrigin(geometry.origin)
        image.SetDirection(geometry.direction)
    with atomic_path(path) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=ending in (".nii.gz", ".nrrd", ".mha"))
