"""Read and write medical and 2D images with their geometry.

Arrays are always 3D in numpy order ``(z, y, x)``; ``Geometry.spacing`` follows the same order (the reverse of
SimpleITK's ``(x, y, z)``). A 2D image (PNG/BMP/TIFF, or a 1xHxW NIfTI) is a ``(1, H, W)`` array, so every later
stage handles 2D and 3D data the same way. Natural 2D images get a nominal spacing of 1 in-plane and
``NATURAL_2D_SLICE_SPACING`` across slices.

Example (``image_path`` is a real Hippocampus image, ``hippocampus_001_0000.nii.gz``):
    >>> image = read_image(image_path)
    >>> image.array.shape, image.geometry.spacing, image.geometry.origin
    ((35, 51, 35), (1.0, 1.0, 1.0), (-1.0, -1.0, 1.0))
    >>> write_image(image.array > 0, image.geometry, "mask.nii.gz")
    >>> mask = read_image("mask.nii.gz")
    >>> mask.geometry == image.geometry, mask.array.dtype
    (True, dtype('uint8'))
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.errors import ImageReadError, UserError
from autoseg.utils.files import atomic_path

# Longest match first: ".nii.gz" before ".gz".
MEDICAL_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
NATURAL_2D_ENDINGS = (".png", ".bmp", ".tif", ".tiff")
DETACHED_HEADER_ENDINGS = (".nhdr", ".mhd")
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
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path}: cannot be read, the file is empty (0 bytes); replace it.") from None
        # ITK's last line says why; it names the file again, which the sentence already does.
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reader error"
        reason = reason.replace(f'"{path}"', "it").replace(str(path), "it").removeprefix("sitk::ERROR: ").rstrip(". ")
        raise ImageReadError(f"{path}: cannot be read (truncated or corrupt file?): {reason}.") from None


@dataclasses.dataclass(frozen=True)
class _NiftiLayout:
    byte_order: str
    datatype: int
    bitpix: int
    dims: tuple[int, ...]
    vox_offset: int

    @property
    def voxel_count(self) -> int:
        count = 1
        for size in self.dims:
            count *= max(int(size), 1)
        return count

    @property
    def expected_size(self) -> int:
        """Bytes a complete file holds: ``vox_offset`` plus ``prod(dim) * bitpix / 8``."""
        return max(self.vox_offset, 348) + self.voxel_count * max(self.bitpix, 8) // 8


def _nifti_layout(header: bytes) -> _NiftiLayout | None:
    """Parse the fields of a NIfTI-1 or NIfTI-2 header that locate the voxels; None if not NIfTI."""
    for order in ("<", ">"):
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            datatype, bitpix = struct.unpack(order + "hh", header[70:74])
            dims = struct.unpack(order + "8h", header[40:56])
            vox_offset = int(struct.unpack(order + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            datatype, bitpix = struct.unpack(order + "hh", header[12:16])
            dims = struct.unpack(order + "8q", header[16:80])
            vox_offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7:
        return None
    return _NiftiLayout(order, int(datatype), int(bitpix), tuple(int(d) for d in dims[1 : dims[0] + 1]), vox_offset)


def _open_nifti(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


# NIfTI datatype codes of floating-point voxels.
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def count_non_finite_nifti_voxels(path: str | os.PathLike[str]) -> int:
    """Number of NaN/Inf voxels stored in a NIfTI file (0 for integer files and other formats).

    ITK's NIfTI reader silently replaces NaN and Inf by 0, so ``read_image`` never shows them; a dataset
    check needs to look at the stored bytes to tell the user their images are corrupt.
    """
    path = Path(path)
    if file_ending(path) not in (".nii", ".nii.gz"):
        return 0
    with _open_nifti(path) as stream:
        layout = _nifti_layout(stream.read(540))
        if layout is None or layout.datatype not in _NIFTI_FLOAT_TYPES:
            return 0
        stream.seek(layout.vox_offset)
        dtype = np.dtype(layout.byte_order + _NIFTI_FLOAT_TYPES[layout.datatype])
        voxels = np.frombuffer(stream.read(layout.voxel_count * dtype.itemsize), dtype=dtype)
    return int(voxels.size - np.count_nonzero(np.isfinite(voxels)))


def require_finite_voxels(path: str | os.PathLike[str]) -> None:
    """Raise ``ImageReadError`` naming ``path`` if the NIfTI file stores NaN or Inf voxels.

    ``read_image`` cannot tell (ITK reads them as 0), so this reads the stored bytes once more; other formats keep
    NaN/Inf in the array they return, where the caller sees them.
    """
    count = count_non_finite_nifti_voxels(path)
    if count:
        raise ImageReadError(
            f"{path}: holds {count} NaN or Inf voxel(s); replace them with a real value (e.g. the background's) first."
        )


def _gzip_is_complete(path: Path, expected_size: int) -> bool:
    """Whether a gzip stream decompresses to at least ``expected_size`` bytes and ends properly.

    The gzip trailer stores the uncompressed size modulo 2**32 in its last four bytes; a truncated file ends
    mid-stream, so those bytes almost never equal the expected size. Only when they differ do we pay for a full
    streaming decompression to tell a truncated file from one with trailing padding.
    """
    with open(path, "rb") as stream:
        stream.seek(-4, os.SEEK_END)
        if struct.unpack("<I", stream.read(4))[0] == expected_size % 2**32:
            return True
    decompressed = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 22):
                decompressed += len(chunk)
    except (EOFError, OSError, zlib.error):
        return False
    return decompressed >= expected_size


def _verify_nifti_complete(path: Path, ending: str) -> None:
    """Raise ``ImageReadError`` for a truncated NIfTI file.

    ITK's NIfTI reader silently fills the missing part of a truncated file (``.nii`` or ``.nii.gz``) with
    zeros or garbage instead of failing, so a partly copied dataset would otherwise train on corrupt voxels.
    """
    if ending not in (".nii", ".nii.gz"):
        return
    try:
        with _open_nifti(path) as stream:
            layout = _nifti_layout(stream.read(540))
    except (EOFError, OSError, zlib.error):
        raise ImageReadError(f"{path}: cannot be read (truncated or corrupt file?).") from None
    if layout is None:
        return
    expected_size = layout.expected_size
    complete = (
        _gzip_is_complete(path, expected_size) if ending == ".nii.gz" else path.stat().st_size >= expected_size
    )
    if not complete:
        raise ImageReadError(f"{path}: is truncated (the file holds fewer voxels than its header declares).")


def read_image_header(path: str | os.PathLike[str]) -> Geometry:
    """Read only the geometry of an image file, without its voxels (fast)."""
    path = Path(path)
    _require_ending(path)
    reader = _read_sitk(path, header_only=True)
    dimension = reader.GetDimension()
    size = reader.GetSize()
    # Natural images stored as RGB(A) with equal colour channels are grey; only reading the voxels tells.
    if reader.GetNumberOfComponents() != 1 and file_ending(path) not in NATURAL_2D_ENDINGS:
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


# Voxel types whose files can hold no NaN or Inf: checking such a file needs its header, not its voxels.
INTEGER_PIXEL_IDS = frozenset({
    sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
    sitk.sitkUInt64, sitk.sitkInt64,
})


def read_integer_nifti_header(path: str | os.PathLike[str]) -> Geometry | None:
    """The geometry of a single-channel integer NIfTI file, verified complete, without decoding its voxels.

    None for any other file (float voxels, other formats, several components): read it with ``read_image``.
    ``read_image`` would find nothing more in such a file: it is complete, and integers are always finite.

    Raises:
        ImageReadError: the file is missing, unreadable, truncated or not 2D/3D.
    """
    path = Path(path)
    ending = _require_ending(path)
    if ending not in (".nii", ".nii.gz"):
        return None
    reader = _read_sitk(path, header_only=True)
    if reader.GetPixelID() not in INTEGER_PIXEL_IDS or reader.GetNumberOfComponents() != 1:
        return None
    _verify_nifti_complete(path, ending)
    return read_image_header(path)


def read_image(path: str | os.PathLike[str]) -> Image:
    """Read one single-channel image as a ``(z, y, x)`` array with its geometry.

    Raises:
        ImageReadError: the file is missing, unreadable, multi-component or not 2D/3D.
    """
    path = Path(path)
    ending = _require_ending(path)
    image = _read_sitk(path, header_only=False)
    _verify_nifti_complete(path, ending)
    if ending in NATURAL_2D_ENDINGS and image.GetNumberOfComponentsPerPixel() in (3, 4):
        image = _grey_from_colour(image, path)
    geometry = _geometry_from_sitk(image, path)
    array = sitk.GetArrayFromImage(image)
    return Image(array=array.reshape(geometry.shape), geometry=geometry)


def _grey_from_colour(image: sitk.Image, path: Path) -> sitk.Image:
    """The first channel of an RGB(A) natural image whose colour channels are all equal.

    Grey images are often saved as RGB (and ITK reads palette BMPs as RGB); a real colour image is refused
    because its channels must be separate files for the network to see them as channels.
    """
    channels = [sitk.VectorIndexSelectionCast(image, index) for index in range(image.GetNumberOfComponentsPerPixel())]
    colour = [sitk.GetArrayViewFromImage(channel) for channel in channels[:3]]
    alpha_is_opaque = len(channels) == 3 or np.unique(sitk.GetArrayViewFromImage(channels[3])).size == 1
    if not (np.array_equal(colour[0], colour[1]) and np.array_equal(colour[0], colour[2]) and alpha_is_opaque):
        raise ImageReadError(
            f"{path}: is a colour image; store each colour channel as its own single-channel file "
            "(CASE_0000, CASE_0001, CASE_0002)."
        )
    return channels[0]


def _natural_dtype(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8 or array.dtype == np.uint16:
        return array
    if array.min(initial=0) >= 0 and array.max(initial=0) <= 255:
        return array.astype(np.uint8)
    if array.min(initial=0) >= 0 and array.max(initial=0) <= 65535:
        return array.astype(np.uint16)
    raise UserError("PNG/BMP/TIFF output needs values in 0..65535; write a NIfTI file instead.")


def write_image(
    array: np.ndarray, geometry: Geometry, path: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None
) -> None:
    """Write a ``(z, y, x)`` array with ``geometry`` atomically; the format follows the file ending.

    The written file has exactly the spacing, origin and direction in ``geometry``. Arrays from 2D files
    are written back as 2D images. ``metadata`` becomes free-form header fields where the format has them
    (NRRD writes ``key:=value`` lines, which is how 3D Slicer stores segment names and colours).
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
    for key, value in (metadata or {}).items():
        image.SetMetaData(key, value)
    compress = ending in (".nii.gz", ".nrrd", ".mha")
    if ending in DETACHED_HEADER_ENDINGS:
        _write_detached(image, path, compress=compress)
        return
    with atomic_path(path) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=compress)
        _verify_written(temporary, ending)


def _verify_written(path: Path, ending: str) -> None:
    """Raise ``ImageReadError`` for an empty or cut-short file that a writer claimed to have written.

    ITK's NIfTI writer reports a short write (a full disk) only on stderr and returns as if it had succeeded; the
    ``atomic_path`` around the write turns the error into "no space left" when the disk is full.
    """
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the image writer wrote nothing.")
    _verify_nifti_complete(path, ending)


def _write_detached(image: sitk.Image, path: Path, *, compress: bool) -> None:
    """Write a header + data file pair (``.nhdr``, ``.mhd``) so that the header names the final data file.

    Writing through a renamed temporary header would leave it pointing at the temporary data file name. We
    write both under their final names in a private temporary folder, then move the data file first and the
    header last, so a header never points at a data file that is not there.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.partial", dir=path.parent) as folder:
        sitk.WriteImage(image, str(Path(folder) / path.name), useCompression=compress)
        for written in sorted(Path(folder).iterdir(), key=lambda file: file.name == path.name):
            os.replace(written, path.parent / written.name)
