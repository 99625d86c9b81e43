"""Headless Chromium (Debian's `chromium`; `make chromium` installs it): a page's DOM after
rendering, and screenshots."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(url: str, *extra: str, width: int = 1600, height: int = 1000) -> str:
    """Load `url` in a fresh profile with nothing phoning home; Chromium's stdout."""
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                *extra,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    return out.stdout


def full_page_screenshot(url: str, path: Path, width: int = 1600, tallest: int = 16000) -> Path:
    """A screenshot of the whole page: taken `tallest` px high, then cut below the last
    row that differs from the page's background (Chromium's headless screenshot is the
    window, not the page)."""
    from PIL import Image, ImageChops

    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    chromium(url, f"--screenshot={path}", width=width, height=tallest)
    image = Image.open(path).convert("RGB")
    background = Image.new("RGB", image.size, image.getpixel((2, image.height - 2)))
    box = ImageChops.difference(image, background).getbbox()
    bottom = min(image.height, (box[3] if box else image.height) + 24)
    # 256 colours: a third of the bytes, and the page has few more
    image.crop((0, 0, width, bottom)).quantize(colors=256).save(path, optimize=True)
    return path
