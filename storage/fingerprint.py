"""Content fingerprints: stable sha256 digests of files and of typed values.

A `Path` is fingerprinted by the bytes it names (a file, or every file under a
directory), never by its name, so a changed blocklist or WARC changes every key
that depends on it. Pydantic models are fingerprinted by their JSON dump.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

_CHUNK = 1 << 20
# (path, size, mtime_ns) -> digest: rehashing a multi-GB shard on every lookup is waste.
_memo: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, memoised on (path, size, mtime) within a process."""
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if (hit := _memo.get(memo_key)) is not None:
        return hit
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    _memo[memo_key] = digest
    return digest


def _canonical(obj: Any) -> Any:
    if hasattr(obj, "cache_identity"):  # manifests: content, not incidental bytes
        return {"__artifact__": _canonical(obj.cache_identity())}
    if isinstance(obj, BaseModel):
        return {"__model__": type(obj).__name__, **_canonical(obj.model_dump(mode="python"))}
    if isinstance(obj, Path):
        if obj.is_file():
            return {"__file__": file_sha256(obj)}
        if obj.is_dir():
            files = sorted(p for p in obj.rglob("*") if p.is_file())
            return {"__dir__": [[str(p.relative_to(obj)), file_sha256(p)] for p in files]}
        return {"__missing__": os.fspath(obj)}
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    raise TypeError(f"cannot fingerprint a {type(obj).__name__}; pass a manifest or config")


def fingerprint(*parts: Any) -> str:
    """A hex sha256 of the canonical JSON of `parts` (Paths by content)."""
    blob = json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
