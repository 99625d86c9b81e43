"""What a cache key is made of, named part by part, and why a stage runs again.

A task run's key is the digest of its *parts* (`key_parts`), each named so a change
can be said in words:

    cfg.min_chars            "200"        a leaf of the task's sub-config (output fields only)
    input docs               "9f…"        an upstream manifest's content identity
    input docs[00003.warc.gz] "9f…"       one element of a list of them (per WARC)
    code fineflow.tasks.quality.judge "…" a project definition the task reaches (storage/code)
    STAGE_VERSION            "3"          the module's explicit salt, if it has one

The data root is never a part (a moved or copied root stays cached); a remote root is.
When a task run completes, its parts are kept in `_prefect/why/<stage>/<slot>.json`
(slot: its WARC, or `corpus`); the next time that slot misses the cache, `explain`
compares the two and says what changed: `extract.min_chars 200 -> 100`, `upstream
url_filter output changed`, `code changed: fineflow.tasks.quality.judge`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fineflow.storage import layout
from fineflow.storage.code import code_parts
from fineflow.storage.fingerprint import canonical_json, fingerprint, output_fields
from fineflow.storage.names import safe_name

MAX_SHOWN = 3  # changed parts named per kind; the rest are counted
FIRST = "first run here"  # no run of this stage and WARC on this data root to compare with


def key_parts(fn: Any, inputs: dict[str, Any], remote: str | None = None) -> dict[str, str]:
    """The named parts of the cache key of `fn` called with `inputs` (its bound arguments)."""
    parts: dict[str, str] = {}
    for name, value in inputs.items():
        if name != "root":
            parts.update(_value_parts(name, value))
    if remote is not None:
        parts["remote_root"] = remote
    parts.update((f"code {qual}", digest) for qual, digest in code_parts(fn).items())
    version = getattr(sys.modules.get(fn.__module__), "STAGE_VERSION", None)
    if version is not None:
        parts["STAGE_VERSION"] = str(version)
    return parts


def _value_parts(name: str, value: Any) -> Iterator[tuple[str, str]]:
    if hasattr(value, "cache_identity"):  # a manifest or a WARC source: what it holds
        yield f"input {name}", fingerprint(value)[:16]
    elif isinstance(value, BaseModel):  # a config: one part per output-affecting leaf
        for field, v in output_fields(value).items():
            yield from _value_parts(f"{name}.{field}", v)
    elif isinstance(value, (list, tuple)) and any(hasattr(v, "cache_identity") for v in value):
        for i, v in enumerate(value):
            label = getattr(v, "warc", None) or str(i)
            if hasattr(v, "stage"):  # a manifest: dedup's funnel holds three per WARC
                label = f"{v.stage}/{label}"
            yield from _value_parts(f"{name}[{label}]", v)
    else:
        yield name, canonical_json(value)


def slot(inputs: dict[str, Any]) -> str:
    """Which run of a stage this is across runs: its WARC's name, or `corpus`."""
    for value in inputs.values():  # a manifest of one WARC, or a WARC source
        if hasattr(value, "cache_identity") and (warc := getattr(value, "warc", None)):
            return safe_name(warc)
    return "corpus"


def _record(root: Path, stage: str, slot_name: str) -> Path:
    return layout.why_dir(root) / safe_name(stage) / f"{slot_name}.json"


def read(root: Path, stage: str, slot_name: str) -> dict[str, Any]:
    """{"parts": of its last completed run, "reason": why its last run ran (None: cached),
    "pending": the parts of a run that has not completed yet}; {} if none is known."""
    try:
        return json.loads(_record(root, stage, slot_name).read_text())
    except (OSError, ValueError):
        return {}


def write(root: Path, stage: str, slot_name: str, record: dict[str, Any]) -> None:
    path = _record(root, stage, slot_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one temporary name per writer: tasks of one stage run at once in threads of a process
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(record, sort_keys=True))
    tmp.replace(path)


def completed(root: Path, stage: str, slot_name: str) -> None:
    """A run of (stage, slot) completed: its pending parts become the ones to compare with."""
    slot_name = safe_name(slot_name)
    record = read(root, stage, slot_name)
    if "pending" in record:
        record["parts"] = record.pop("pending")
        write(root, stage, slot_name, record)


def reasons(root: Path, stage: str, slots: list[str]) -> list[str]:
    """Why each of these slots of `stage` ran in its last run (cached ones omitted)."""
    found = (read(root, stage, safe_name(s)).get("reason") for s in slots)
    return [r for r in found if r]


def summarize(reasons: list[str]) -> str:
    """The reasons of one stage's task runs in one line: the commonest first, counted."""
    if not reasons:
        return ""
    counted = Counter(reasons).most_common()
    first, n = counted[0]
    line = first if len(reasons) == 1 else f"{first} ({n} of {len(reasons)})"
    return line + (f"; and {len(counted) - 1} other reason(s)" if len(counted) > 1 else "")


def explain(stage: str, old: dict[str, str] | None, new: dict[str, str]) -> str:
    """Why a stage whose parts went from `old` to `new` runs again, in one line."""
    if old is None:
        return FIRST
    said = []
    changed = [k for k in sorted(new.keys() | old.keys()) if old.get(k) != new.get(k)]
    config = [k for k in changed if k.startswith("cfg.")]
    for k in config[:MAX_SHOWN]:
        said.append(f"{stage}.{k[4:]} {_shown(old.get(k))} -> {_shown(new.get(k))}")
    if len(config) > MAX_SHOWN:
        said.append(f"{len(config) - MAX_SHOWN} more setting(s)")
    inputs = [k for k in changed if k.startswith("input ")]
    if inputs:
        added = [k for k in inputs if k not in old]
        gone = [k for k in inputs if k not in new]
        moved = [k for k in inputs if k in old and k in new]
        if moved:
            said.append(f"upstream output changed: {_names(moved)}")
        if added:
            said.append(f"new input: {_names(added)}")
        if gone:
            said.append(f"input gone: {_names(gone)}")
    code = [k.removeprefix("code ") for k in changed if k.startswith("code ")]
    if code:
        said.append(f"code changed: {_names(code)}")
    rest = [k for k in changed if not k.startswith(("cfg.", "input ", "code "))]
    said += [f"{k} {_shown(old.get(k))} -> {_shown(new.get(k))}" for k in rest]
    return "; ".join(said) if said else "its cache record is gone"


def _names(keys: list[str]) -> str:
    shown = ", ".join(k.removeprefix("input ") for k in keys[:MAX_SHOWN])
    return shown + (f" (+{len(keys) - MAX_SHOWN} more)" if len(keys) > MAX_SHOWN else "")


def _shown(value: str | None) -> str:
    if value is None:
        return "(none)"
    return value if len(value) <= 40 else value[:37] + "..."
