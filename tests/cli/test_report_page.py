"""The report of the bundled sample's run, rendered in headless Chromium.

`fineflow run` on the sample (every stage, as `make run` does), whose last line is the
report's address (tests/cli/test_progress.py holds `fineflow report` to the same), then
Chromium loads the file: the DOM after rendering holds the five sections,
each with its pictures, and nothing was fetched. The whole page is kept as
test-output/report.png (the README shows it) and the report's figures as
test-output/report.txt.
"""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fineflow.tasks.report_page import SECTIONS
from tests.helpers.chromium import CHROMIUM, chromium, full_page_screenshot
from tests.helpers.cli import fineflow

REPO_ROOT = Path(__file__).resolve().parents[2]


pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make chromium)"),
    pytest.mark.slow,  # the whole sample: about 2-3 minutes on the 2-core dev box
]


class Pictures(HTMLParser):
    """Per section (by id): how many pictures (svg) and drawn shapes it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.section: str | None = None
        self.count: dict[str, dict[str, int]] = {}
        self.fetches: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.section = dict(attrs).get("id") or ""
            self.count[self.section] = {}
        elif self.section is not None:
            c = self.count[self.section]
            c[tag] = c.get(tag, 0) + 1
        if tag in ("script", "link", "img", "iframe"):
            self.fetches.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.section = None


def test_the_sample_runs_report_renders_with_every_section_and_picture(tmp_path):
    data = tmp_path / "data"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    rc, out = fineflow("run", "--set", f"data_root={data}", env=env, timeout=1800)
    assert rc == 0, out[-4000:]
    said = re.search(r"the run, step by step: file://(\S+)", out)
    assert said, out[-4000:]
    page = Path(said.group(1))
    assert page.is_file() and page.parent.parent.parent == data

    dom = chromium(page.as_uri(), "--dump-dom")
    parsed = Pictures()
    parsed.feed(dom)
    assert tuple(parsed.count) == SECTIONS, dom[:2000]
    for section, tags in parsed.count.items():
        drawn = tags.get("rect", 0) + tags.get("polyline", 0)
        assert tags.get("svg", 0) >= 1 and drawn > 0, (section, tags)
    assert parsed.count["cleaning"]["pre"] >= 6  # raw HTML beside main text, 3 pages
    assert parsed.count["inference"]["svg"] >= 3 * 7  # 3 prompts: before, after, 6 steps
    assert parsed.fetches == []

    report = json.loads((page.parent / "report.json").read_text())
    shot = full_page_screenshot(page.as_uri(), REPO_ROOT / "test-output" / "report.png")
    from PIL import Image

    image = Image.open(shot)
    assert image.width == 1600 and image.height > 5000  # the whole page, not the window
    assert len(image.convert("L").getcolors(1 << 16) or []) > 50  # drawn, not blank

    line = re.search(r"^report\s+ran\s+([\d.]+)s\s+(.*)$", out, re.M)
    assert line, out[-3000:]
    figures = (
        f"report stage: {line.group(1)} s ({line.group(2)})\n"
        f"report.html: {page.stat().st_size:,} bytes; report.json: "
        f"{(page.parent / 'report.json').stat().st_size:,} bytes\n"
        f"screenshot: {shot.relative_to(REPO_ROOT)} {image.width}x{image.height}\n"
        f"corpus: {report['tokens']['corpus']['shard_tokens']:,} tokens, "
        f"{report['tokens']['corpus']['bytes_per_token']:.2f} bytes/token\n"
    )
    (REPO_ROOT / "test-output" / "report.txt").write_text(figures)
