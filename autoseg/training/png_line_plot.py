"""A dependency-free line-plot renderer (numpy + zlib) for ``progress.png`` when matplotlib is not installed.

Panels are stacked vertically; each has a frame, its title and y range printed in a 3x5 pixel font, and one
polyline per series, scaled to the panel. Good enough to see a loss fall or a Dice plateau, and nothing more.
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
import zlib
from collections.abc import Sequence

import numpy as np

from autoseg.utils.files import atomic_path

SERIES_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75))
FRAME_COLOUR = (90, 90, 90)
TEXT_COLOUR = (0, 0, 0)
GLYPH_WIDTH, GLYPH_HEIGHT, GLYPH_SCALE = 3, 5, 2

# 3x5 glyphs, rows top to bottom, "1" = ink. Only the characters the progress plot needs.
GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "+": "000010111010000", "e": "000111101110011", " ": "000000000000000", ":": "000010000010000",
    "/": "001001010100100", "A": "010101111101101", "C": "111100100100111", "D": "110101101101110",
    "E": "111100110100111", "F": "111100110100100", "G": "111100101101111", "H": "101101111101101",
    "I": "111010010010111", "L": "100100100100111", "M": "101111111101101", "N": "111101101101101",
    "O": "111101101101111", "P": "111101111100100", "R": "110101110101101", "S": "111100111001111",
    "T": "111010010010010", "U": "101101101101111", "V": "101101101101010", "W": "101101111111101",
    "X": "101101010101101", "Y": "101101010010010", "(": "010100100100010", ")": "010001001001010",
}


@dataclasses.dataclass(frozen=True)
class Panel:
    """One plot: a title and named series of y values (x is the index; None or NaN values are skipped)."""

    title: str
    series: dict[str, Sequence[float | None]]


def draw_text(canvas: np.ndarray, text: str, top: int, left: int, colour: tuple[int, int, int] = TEXT_COLOUR) -> None:
    for index, character in enumerate(text.upper() if character_set_needs_upper(text) else text):
        glyph = GLYPHS.get(character, GLYPHS[" "])
        bits = np.array([int(b) for b in glyph], dtype=bool).reshape(GLYPH_HEIGHT, GLYPH_WIDTH)
        bits = np.kron(bits, np.ones((GLYPH_SCALE, GLYPH_SCALE), dtype=bool))
        y0, x0 = top, left + index * (GLYPH_WIDTH + 1) * GLYPH_SCALE
        region = canvas[y0 : y0 + bits.shape[0], x0 : x0 + bits.shape[1]]
        region[bits[: region.shape[0], : region.shape[1]]] = colour


def character_set_needs_upper(text: str) -> bool:
    """Glyphs exist for upper-case letters and a lower-case ``e`` (exponents); other letters are upper-cased."""
    return any(c.isalpha() and c != "e" for c in text)


def draw_line(canvas: np.ndarray, start: tuple[float, float], end: tuple[float, float], colour, width: int = 2) -> None:
    """Rasterise a segment by sampling one point per pixel of its longer extent."""
    (y0, x0), (y1, x1) = start, end
    steps = int(max(abs(y1 - y0), abs(x1 - x0))) + 1
    ys = np.rint(np.linspace(y0, y1, steps)).astype(int)
    xs = np.rint(np.linspace(x0, x1, steps)).astype(int)
    for dy in range(width):
        for dx in range(width):
            yy = np.clip(ys + dy, 0, canvas.shape[0] - 1)
            xx = np.clip(xs + dx, 0, canvas.shape[1] - 1)
            canvas[yy, xx] = colour


def format_number(value: float) -> str:
    if value == 0 or 1e-2 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e")


def render_panels(panels: Sequence[Panel], *, width: int = 640, panel_height: int = 160) -> np.ndarray:
    """``(height, width, 3)`` uint8 image of the panels stacked top to bottom."""
    canvas = np.full((panel_height * len(panels), width, 3), 255, dtype=np.uint8)
    margin_left, margin_right, margin_top, margin_bottom = 70, 10, 18, 8
    for panel_index, panel in enumerate(panels):
        top = panel_index * panel_height
        box_top, box_bottom = top + margin_top, top + panel_height - margin_bottom
        box_left, box_right = margin_left, width - margin_right
        values = [
            float(v) for series in panel.series.values() for v in series if v is not None and math.isfinite(float(v))
        ]
        # Title, then each series name in its line's colour: the legend.
        cursor = box_left
        for index, label in enumerate([f"{panel.title}:", *panel.series]):
            colour = TEXT_COLOUR if index == 0 else SERIES_COLOURS[(index - 1) % len(SERIES_COLOURS)]
            draw_text(canvas, label, top + 3, cursor, colour)
            cursor += (len(label) + 2) * (GLYPH_WIDTH + 1) * GLYPH_SCALE
        for corner_start, corner_end in (
            ((box_top, box_left), (box_top, box_right)),
            ((box_bottom, box_left), (box_bottom, box_right)),
            ((box_top, box_left), (box_bottom, box_left)),
            ((box_top, box_right), (box_bottom, box_right)),
        ):
            draw_line(canvas, corner_start, corner_end, FRAME_COLOUR, width=1)
        if not values:
            continue
        low, high = min(values), max(values)
        if high - low < 1e-12:
            low, high = low - 0.5, high + 0.5
        draw_text(canvas, format_number(high), box_top, 4)
        draw_text(canvas, format_number(low), box_bottom - GLYPH_HEIGHT * GLYPH_SCALE, 4)
        longest = max(len(series) for series in panel.series.values())
        for series_index, series in enumerate(panel.series.values()):
            colour = SERIES_COLOURS[series_index % len(SERIES_COLOURS)]
            previous = None
            for x_index, value in enumerate(series):
                if value is None or not math.isfinite(float(value)):
                    previous = None
                    continue
                x = box_left + 2 + (box_right - box_left - 4) * (x_index / max(1, longest - 1))
                y = box_bottom - 2 - (box_bottom - box_top - 4) * ((float(value) - low) / (high - low))
                draw_line(canvas, previous or (y, x), (y, x), colour)
                previous = (y, x)
    return canvas


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` uint8 image: 8-bit RGB, no filtering, zlib-compressed rows."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    height, width = image.shape[:2]

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    rows = np.concatenate([np.zeros((height, 1), dtype=np.uint8), image.reshape(height, width * 3)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def write_line_plot_png(path: str | os.PathLike[str], panels: Sequence[Panel], *, width: int = 640) -> None:
    """Render ``panels`` and write them atomically as a PNG."""
    data = encode_png(render_panels(panels, width=width))
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
