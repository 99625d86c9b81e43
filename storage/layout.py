"""Every path under the data root, in one place.

<data_root>/
  <stage>/<key>/…         artifacts, one directory per stage input fingerprint
  <stage>/.<key>.tmp-*    unfinished writes: never trusted; a killed writer's are removed by
                          the next writer of the key
  _prefect/results/       Prefect result records (the task cache), beside the data
  _prefect/locks/         per-cache-key locks for overlapping runs
  _prefect/why/<stage>/   per WARC (or `corpus`), the key parts of its last run (storage/why.py)
  _failed/<source>.json   why a WARC failed its per-WARC stages last time (gone once it works)
  _logs/run-*.log         each `fineflow run`'s full log, tracebacks included
  _compiled/<what>/<key>/ files one machine derives once and its workers share (url_filter's
                          blocklist as sorted hashes): not artifacts, never mirrored

A remote data root (an fsspec URL, `storage.remote`) has the same layout; its local
working copy defaults to `~/.cache/fineflow/<scheme>/<bucket>/<prefix>` ($XDG_CACHE_HOME).
"""

from __future__ import annotations

import os
from pathlib import Path

from fineflow.storage.names import PathEscape, safe_name


def artifact_dir(root: Path, stage: str, key: str) -> Path:
    """`<root>/<stage>/<key>`; both must be single safe names (PathEscape otherwise)."""
    for part in (stage, key):
        if safe_name(part) != part:
            raise PathEscape(f"artifact path part {part!r} is not a single safe file name")
    return Path(root) / stage / key


def results_dir(root: Path) -> Path:
    return Path(root) / "_prefect" / "results"


def why_dir(root: Path) -> Path:
    """Per stage and WARC, the key parts of its last run: what `--why` compares with."""
    return Path(root) / "_prefect" / "why"


def locks_dir(root: Path) -> Path:
    return Path(root) / "_prefect" / "locks"


def failures_dir(root: Path) -> Path:
    return Path(root) / "_failed"


def logs_dir(root: Path) -> Path:
    return Path(root) / "_logs"


def compiled_dir(root: Path, what: str, key: str) -> Path:
    """`<root>/_compiled/<what>/<key>`: derived files a machine builds once (not artifacts)."""
    for part in (what, key):
        if safe_name(part) != part:
            raise PathEscape(f"compiled path part {part!r} is not a single safe file name")
    return Path(root) / "_compiled" / what / key


def work_dir(root: Path, stage: str, key: str) -> Path:
    """Scratch space that survives a killed run (training resumes from here); not an artifact."""
    return Path(root) / stage / f".{key}.work"


def remote_cache_dir(url: str) -> Path:
    """The default local working copy of the remote data root `url`."""
    scheme, _, rest = url.partition("://")
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(
        cache, "fineflow", scheme, *[p for p in rest.split("/") if p not in ("", ".", "..")]
    )
