"""Write one self-contained HTML page (images inlined as base64) that opens offline in any browser."""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import numbers
import os
from pathlib import Path

from autoseg.utils.files import atomic_path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { border-bottom: 2px solid #333; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
tr.best td { background: #e6f4e6; font-weight: 600; }
figure { display: inline-block; margin: 0.4rem; vertical-align: top; }
figure img { max-width: 520px; border: 1px solid #ccc; } figcaption { font-size: 0.85rem; color: #555; }
figure.wide { display: block; } figure.wide img { max-width: 100%; }
.note { color: #555; font-size: 0.9rem; }
caption { text-align: left; font-weight: 600; padding: 0.3rem 0; }
"""


@dataclasses.dataclass
class ReportSection:
    """A titled block of the report: any mix of paragraphs, tables and images, shown in this order."""

    title: str
    paragraphs: list[str] = dataclasses.field(default_factory=list)
    tables: list[tuple[list[str], list[list[object]], int | None, str]] = dataclasses.field(default_factory=list)
    images: list[tuple[str, bytes, bool]] = dataclasses.field(default_factory=list)

    def add_table(
        self, header: list[str], rows: list[list[object]], *, highlight_row: int | None = None, caption: str = ""
    ) -> None:
        """Add a table; ``caption`` names it (needed when a section holds several tables of the same shape)."""
        self.tables.append((header, rows, highlight_row, caption))

    def add_image(self, caption: str, png: bytes | str | os.PathLike[str], *, wide: bool = False) -> None:
        """Add a PNG given as bytes or as a path (a missing file is noted in the caption, not fatal).

        Images sit side by side at most 520 px wide (overlay pairs); ``wide`` ones (plots with text) get a line of
        their own at up to the page width, so their labels stay legible.
        """
        if isinstance(png, (str, os.PathLike)):
            path = Path(png)
            if not path.is_file():
                self.paragraphs.append(f"({caption}: {path.name} not found)")
                return
            png = path.read_bytes()
        self.images.append((caption, png, wide))


def format_number(value: float | None) -> str:
    """A measured number as the report shows it: four decimals below 10 (Dice, IoU, precision: candidates differ in
    the third), two up to 1000 (distances in mm, seconds), none above; "n/a" for a missing or NaN value."""
    if value is None or math.isnan(value):
        return "n/a"
    if abs(value) < 10:
        return f"{value:.4f}"
    return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"


def _format_cell(value: object) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):  # numpy floats too
        value = float(value)
        return "&ndash;" if math.isnan(value) else format_number(value)
    return "&ndash;" if value is None else html.escape(str(value))


def _render_table(header: list[str], rows: list[list[object]], highlight_row: int | None, caption: str) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = []
    for index, row in enumerate(rows):
        css = ' class="best"' if index == highlight_row else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{_format_cell(cell)}</td>" for cell in row) + "</tr>")
    title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _render_section(section: ReportSection) -> str:
    parts = [f"<h2>{html.escape(section.title)}</h2>"]
    parts += [f"<p>{html.escape(text)}</p>" for text in section.paragraphs]
    parts += [_render_table(*table) for table in section.tables]
    for caption, png, wide in section.images:
        encoded = base64.b64encode(png).decode("ascii")
        css = ' class="wide"' if wide else ""
        parts.append(
            f'<figure{css}><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return "\n".join(parts)


def write_report(path: str | os.PathLike[str], *, title: str, sections: list[ReportSection], footer: str = "") -> Path:
    """Write the report atomically and return its path. Everything is inlined: no network, no side files."""
    body = "\n".join(_render_section(section) for section in sections)
    document = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{body}\n"
        f'<p class="note">{html.escape(footer)}</p></body></html>\n'
    )
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_text(document, encoding="utf-8")
    return path
