"""Content fingerprints: stable sha256 digests of files and of typed values.

A `Path` is fingerprinted by the bytes it names (a file, or every file under a
directory), never by its name, so a changed blocklist or WARC changes every key
that depends on it. Pydantic models are fingerprinted by their fields, less those
declared unable to change an output (`json_schema_extra={"affects_output": False}`:
threads, workers, memory limits, retries), so such a setting never reruns a stage.
An object with a `cache_identity()` (a manifest, a WARC source) is fingerprinted by
what that returns.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

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


def affects_output(field: FieldInfo) -> bool:
    """False for a field declared unable to change any output (kept out of every key)."""
    extra = field.json_schema_extra
    return not (isinstance(extra, dict) and extra.get("affects_output") is False)


def output_fields(model: BaseModel) -> dict[str, Any]:
    """The model's field values that can change an output, by name."""
    fields = type(model).model_fields
    return {name: getattr(model, name) for name, f in fields.items() if affects_output(f)}


def output_dump(model: BaseModel) -> dict[str, Any]:
    """The model as JSON-ready data, less (at every depth) the fields that cannot change
    an output: what an artifact records of the config that made it."""
    full = model.model_dump(mode="json")
    return {
        name: output_dump(v) if isinstance(v, BaseModel) else full[name]
        for name, v in output_fields(model).items()
    }


def _canonical(obj: Any) -> Any:
    if hasattr(obj, "cache_identity"):  # manifests: content, not incidental bytes
        return {"__artifact__": _canonical(obj.cache_identity())}
    if isinstance(obj, BaseModel):
        return {"__model__": type(obj).__name__, **_canonical(output_fields(obj))}
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


def canonical_json(obj: Any) -> str:
    """The canonical JSON of `obj` (Paths by content, manifests by identity)."""
    return json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"))


def fingerprint(*parts: Any) -> str:
    """A hex sha256 of the canonical JSON of `parts` (Paths by content)."""
    return hashlib.sha256(canonical_json(list(parts)).encode()).hexdigest()
