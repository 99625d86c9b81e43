"""A small real corpus and config for end-to-end tests of the flow.

The corpus is the first pages of the bundled sample's WARCs (real records, copied
byte for byte), so each flow run takes seconds, not minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from warcio.archiveiterator import ArchiveIterator

from fineflow.config import SAMPLE_DIR, PipelineConfig, deep_merge
from fineflow.storage import catalog
from fineflow.storage.artifacts import ArtifactWriter, Manifest
from fineflow.tasks.dedup import CORPUS_DB

SAMPLE_WARCS = sorted((SAMPLE_DIR / "warcs").glob("*.warc.gz"))
PAGES_PER_WARC = 40


def head_warc(src: Path, dest: Path, pages: int) -> Path:
    """The first `pages` response records of `src` (with their request/metadata), raw."""
    with open(src, "rb") as f:
        it = ArchiveIterator(f)
        responses, end = 0, 0
        for rec in it:
            if rec.rec_type == "response":
                responses += 1
                if responses > pages:
                    break
            it.read_to_end()
            end = it.get_record_offset() + it.get_record_length()
        f.seek(0)
        dest.write_bytes(f.read(end))
    return dest


def small_config(root: Path, warcs: list[str], **over: Any) -> PipelineConfig:
    base = {
        "data_root": root,
        "sources": {"warcs": warcs},
        "tokenizer": {"vocab_size": 512},
        "train": {
            "steps": 12,
            "warmup_steps": 2,
            "batch_size": 4,
            "checkpoint_every": 5,
            "log_every": 4,
            "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
        },
        "evaluate": {"max_new_tokens": 8, "max_val_tokens": 4096},
    }
    return PipelineConfig.model_validate(deep_merge(base, over))


def extract_manifest(root: Path, warc: str, rows: list[tuple[str, str]], tag: str = "") -> Manifest:
    """An extract-stage artifact holding `rows` of (id, text), as the real stage writes it."""
    n = len(rows)
    table = pa.table(
        {
            "id": [r[0] for r in rows],
            "url": [f"https://example.org/{r[0]}" for r in rows],
            "host": ["example.org"] * n,
            "warc": [warc] * n,
            "date": ["2024-03-01T00:00:00Z"] * n,
            "text": [r[1] for r in rows],
            "length": [len(r[1]) for r in rows],
        }
    )
    with ArtifactWriter(root, "extract", f"k-{warc}{tag}", warc=warc) as out:
        pq.write_table(table, out.path("docs.parquet"))
        return out.commit(None, counts={"kept": n})


def corpus_manifest(
    root: Path, docs: list[tuple[str, str, bool]], clusters: dict[str, str] | None = None
) -> Manifest:
    """A dedup artifact holding `docs` (id, text, keep) as the dedup stage writes it;
    `clusters`: id -> its cluster's id, for documents that are not their own cluster."""
    clusters = clusters or {}
    with ArtifactWriter(root, "dedup", "corpus") as out:
        with catalog.connect(out.path(CORPUS_DB)) as con:
            catalog.create_corpus_tables(con)
            con.executemany(
                "INSERT INTO documents VALUES (?, ?, 'u', 'h', 'w', 'd', ?, ?, ?, 1, ?)",
                [
                    (i, n, t, len(t), clusters.get(i, i), keep)
                    for n, (i, t, keep) in enumerate(docs)
                ],
            )
        return out.commit(None, counts={"docs": len(docs)})


def leaf_fields(model: BaseModel, prefix: str = "") -> list[tuple[str, FieldInfo]]:
    """(dotted name, field) of every leaf of a config, nested models walked by value."""
    out = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out += leaf_fields(value, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", field))
    return out


def value_at(cfg: PipelineConfig, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def with_value(cfg: PipelineConfig, path: str, value: Any) -> PipelineConfig:
    """`cfg` with the leaf at `path` set to `value`, validated (ValueError if refused)."""
    over: dict[str, Any] = {}
    node = over
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return PipelineConfig.model_validate(deep_merge(cfg.model_dump(), over))
