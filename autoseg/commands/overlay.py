"""`autoseg overlay IMAGE LABEL OUT.png`: a PNG of one image slice with its label map tinted and outlined per class."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoseg.errors import UserError
from autoseg.evaluation.overlay import render_overlay, save_png, slice_with_most_foreground
from autoseg.io.images import read_image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file (one channel), e.g. imagesTr/CASE_0000.nii.gz")
    parser.add_argument("label", help="label map on the same grid, e.g. labelsTr/CASE.nii.gz or a prediction")
    parser.add_argument("output", help="PNG file to write")
    parser.add_argument("--slice", type=int, default=None, help="slice index (default: the most labelled slice)")
    parser.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="slicing axis in (z, y, x) order")
    parser.add_argument("--opacity", type=float, default=0.35, help="tint strength of the classes, 0..1")
    parser.add_argument("--no-outline", action="store_true", help="tint only, without class outlines")


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise UserError(f"{output}: the overlay is written as PNG; give a file name ending in .png.")
    if not 0.0 <= args.opacity <= 1.0:
        raise UserError(f"--opacity must be between 0 and 1, got {args.opacity}.")
    image = read_image(args.image)
    label = read_image(args.label)
    if image.array.shape != label.array.shape:
        raise UserError(
            f"{args.label}: shape {list(label.array.shape)} differs from the image's {list(image.array.shape)}."
        )
    axis = 0 if image.geometry.is_2d else args.axis
    size = image.array.shape[axis]
    if args.slice is not None and not 0 <= args.slice < size:
        raise UserError(f"{args.image}: --slice {args.slice} is outside 0..{size - 1} along axis {axis}.")
    slice_index = args.slice if args.slice is not None else slice_with_most_foreground(label.array, axis=axis)
    rgb = render_overlay(
        image.array,
        label.array,
        slice_index=slice_index,
        axis=axis,
        spacing=image.geometry.spacing,
        opacity=args.opacity,
        outline=not args.no_outline,
    )
    save_png(rgb, output)
    print(f"wrote {output} (axis {axis}, slice {slice_index}, {rgb.shape[1]}x{rgb.shape[0]} pixels)")
    return 0
