"""The HTML report is one self-contained file: tables, inlined images, no external references."""

from __future__ import annotations

import base64
import re
import zlib
from pathlib import Path

from autoseg.report import ReportSection, write_report


def _tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        import struct

        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    import struct

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(
        b"IEND", b""
    )


def test_report_is_self_contained_and_shows_every_part(tmp_path: Path) -> None:
    png = _tiny_png()
    section = ReportSection("Model selection", paragraphs=["best: 3d_fullres <script>"])
    section.add_table(["configuration", "mean Dice"], [["2d", 0.81], ["3d_fullres", 0.88]], highlight_row=1)
    section.add_image("best case", png)
    section.add_image("missing curve", tmp_path / "nope.png")
    path = write_report(tmp_path / "report.html", title="Dataset X", sections=[section])
    text = path.read_text()
    assert "<td>0.8800</td>" in text and 'class="best"' in text
    assert "&lt;script&gt;" in text  # user-provided text is escaped
    assert "nope.png not found" in text
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert [base64.b64decode(item) for item in embedded] == [png]
    assert not re.search(r'(src|href)="(http|//|/)', text)  # opens offline: nothing is fetched
