"""Extractors for the sandbox tests: real trafilatura, except on pages carrying a marker.

They live in a module of their own because a sandbox worker imports its function by
name (a test's monkeypatch does not reach another process).
"""

from __future__ import annotations

import os
import time

from fineflow.tasks.extract import extract_main_text


def flaky(html: str, *options: bool) -> str | None:
    """Raises on pages about rock pools."""
    if "rock pool" in html:
        raise RuntimeError("parser exploded")
    return extract_main_text(html, *options)


def hangs_or_dies(html: str, *options: bool) -> str | None:
    """Never returns on "HANG" pages, kills its own process on "DIE" pages."""
    if "HANG" in html:
        time.sleep(3600)
    if "DIE" in html:
        os._exit(3)
    return extract_main_text(html, *options)


def square_or_raise(n: int) -> int:
    """n * n; raises on a negative n (for sandbox.ordered_map's tests)."""
    if n < 0:
        raise ValueError(f"negative: {n}")
    return n * n
