"""Image input/output that keeps geometry (spacing, origin, direction) with every array."""

from autoseg.io.images import (
    IMAGE_ENDINGS,
    Geometry,
    Image,
    file_ending,
    read_image,
    read_image_header,
    write_image,
)

__all__ = ["IMAGE_ENDINGS", "Geometry", "Image", "file_ending", "read_image", "read_image_header", "write_image"]
