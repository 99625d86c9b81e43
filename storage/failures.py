"""Per-WARC failure records: `<data_root>/_failed/<source key>.json`, one per failing WARC.

A WARC that fails a per-WARC stage (and so is left out of the corpus) leaves a record
naming the stage and the reason; the next run that gets it through removes it. The
run summary reads the run's own failures; `fineflow status` reads these records, so it
can say why a WARC will run again. A record is a note, never a cache entry: nothing
downstream trusts it.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from fineflow.storage import layout
from fineflow.storage.names import safe_name


def _file(root: Path, source_key: str) -> Path:
    return layout.failures_dir(root) / f"{safe_name(source_key)}.json"


def record(root: Path, source_key: str, failure: dict[str, str]) -> None:
    """Write (atomically) why the WARC with download key `source_key` failed."""
    path = _file(Path(root), source_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(failure, indent=1, sort_keys=True))
    os.replace(tmp, path)


def clear(root: Path, source_key: str) -> None:
    _file(Path(root), source_key).unlink(missing_ok=True)


def load(root: Path, source_key: str) -> dict[str, str] | None:
    try:
        return json.loads(_file(Path(root), source_key).read_text())
    except (OSError, ValueError):
        return None
