"""The back-test's HTML report renders in headless Chromium, with no network.

No Kafka here; it is an integration test because it runs a browser
(``deploy/ci/install-test-tools.sh`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli.backtest import backtest
from service.tools.simulate import history_jsonl

END = 1_717_200_000_000  # 2024-06-01T00:00:00Z
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (deploy/ci/install-test-tools.sh installs it)"
)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--hide-scrollbars",
            # Anything the page tried to fetch would fail: it must not need to.
            "--proxy-server=127.0.0.1:9",
            f"--user-data-dir={tmp_path / 'profile'}",
            *args,
        ],
        capture_output=True,
        timeout=180,
        check=True,
    )


def _png_rows_not_blank(png: bytes) -> int:
    """How many pixel rows of an 8-bit RGB(A) PNG are not all one colour."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(png[16:20], "big")
    depth, colour = png[24], png[25]
    assert depth == 8 and colour in (2, 6)
    channels = 3 if colour == 2 else 4
    data = b""
    pos = 8
    while pos < len(png):
        length = int.from_bytes(png[pos : pos + 4], "big")
        chunk_type = png[pos + 4 : pos + 8]
        if chunk_type == b"IDAT":
            data += png[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(data)
    stride = width * channels
    rows, previous, busy = len(raw) // (stride + 1), bytearray(stride), 0
    for r in range(rows):
        line = raw[r * (stride + 1) : (r + 1) * (stride + 1)]
        kind, row = line[0], bytearray(line[1:])
        for i in range(stride):  # undo the PNG row filter
            left = row[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                row[i] = (row[i] + left) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + up) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                row[i] = (row[i] + best) & 0xFF
        busy += len({bytes(row[i : i + channels]) for i in range(0, stride, channels)}) > 1
        previous = row
    return busy


def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    with events.open("wb") as out:
        for lines, _, _ in history_jsonl(120, 70, END, seed=3):
            out.write(lines)
    html = tmp_path / "report.html"
    result = CliRunner().invoke(
        backtest,
        [
            str(events),
            "--horizon",
            "60d",
            "--bootstrap",
            "30",
            "--html",
            str(html),
            "--json",
            "/dev/null",
        ],
    )
    assert result.exit_code == 0, result.stderr

    dom = _chromium(tmp_path, "--dump-dom", html.as_uri()).stdout.decode()
    # Chromium parsed the whole page: every section and every chart is in its DOM.
    assert dom.count("<svg") >= 5
    for heading in ("Summary", "How well the score ranks", "Lead time", "Suggested weights"):
        assert heading in dom
    assert not re.search(r"<(script|img|link)\b", dom)

    shot = tmp_path / "report.png"
    _chromium(tmp_path, "--window-size=1200,1600", f"--screenshot={shot}", html.as_uri())
    # Text, tables and charts: most rows of the screenshot hold something.
    assert _png_rows_not_blank(shot.read_bytes()) > 800  # of 1600 (a blank page: 0)
