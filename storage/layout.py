"""Every path under the data root, in one place.

<data_root>/
  <stage>/<key>/…         artifacts, one directory per stage input fingerprint
  <stage>/.<key>.tmp-*    unfinished writes (never trusted, removed on rewrite)
  _prefect/results/       Prefect result records (the task cache), beside the data
  _prefect/locks/         per-cache-key locks for overlapping runs
  report.md               the last run's report (a copy of the evaluate artifact's)
"""

from __future__ import annotations

from pathlib import Path


def artifact_dir(root: Path, stage: str, key: str) -> Path:
    return Path(root) / stage / key


def results_dir(root: Path) -> Path:
    return Path(root) / "_prefect" / "results"


def locks_dir(root: Path) -> Path:
    return Path(root) / "_prefect" / "locks"


def work_dir(root: Path, stage: str, key: str) -> Path:
    """Scratch space that survives a killed run (training resumes from here); not an artifact."""
    return Path(root) / stage / f".{key}.work"
