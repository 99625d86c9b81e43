"""Stage "extract": the responses url_filter kept -> docs.parquet of their main text.

Only the kept records are read (by their gzip member offset from records.parquet).
Each HTML payload (at most `max_html_bytes`, else skipped_too_large) is decoded:
a byte-order mark wins; else strict UTF-8 (valid multi-byte UTF-8 is almost never
an accident, and servers often send a stale "iso-8859-1" header for UTF-8 pages);
else the HTTP header charset, then a <meta> charset in the first 4 KiB, strictly;
else the first declared charset (or UTF-8) with errors="replace" (counted
`decoded_lossy`). NUL bytes in the first 8 KiB, or more than 5% replacement or
control characters, mean binary or garbage (dropped_undecodable). Then
trafilatura.extract(favor_precision, include_comments, include_tables from the config;
no metadata; no cross-page deduplication: trafilatura's `deduplicate` drops a paragraph
it has seen in earlier pages of the same process, which makes a page's text depend on
which pages happened to go through that worker before it); None -> dropped_empty, fewer
than `min_chars` characters -> dropped_too_short. An exception is logged and counted skipped_error.

trafilatura runs in `workers` sandbox processes (tasks/sandbox.py) fed one page at a
time: a page that takes longer than `timeout_s` kills its worker (skipped_timeout,
a fresh worker takes over), a worker that dies or hits its `worker_memory_mb`
address-space cap counts skipped_crash; the rest of the WARC goes on. workers = 0
extracts in-process (no timeout), for benchmarks and debugging.

docs.parquet: id (record uuid), url, host, warc (file name), date, text,
length (int64, characters); row groups of 1000 documents, in WARC order.
Counts: total (kept by url_filter), kept, dropped_{empty,too_short,undecodable},
skipped_{too_large,error,timeout,crash,missing}, and decoded_lossy (kept or not).
Stats: chars (characters of text kept).
"""

from __future__ import annotations

import codecs
import logging
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import trafilatura
from prefect import task

from fineflow.config import ExtractConfig
from storage.artifacts import ArtifactWriter, Manifest, stage_key
from tasks.sandbox import Sandbox
from tasks.warc import WarcRecord, read_records_at

STAGE_VERSION = 4  # 3: table text kept; 4: records after a bad one in a gzip member read

log = logging.getLogger("fineflow.extract")

ROW_GROUP = 1000
DOCS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("url", pa.string()),
        ("host", pa.string()),
        ("warc", pa.string()),
        ("date", pa.string()),
        ("text", pa.string()),
        ("length", pa.int64()),
    ]
)
COUNT_KEYS = (
    "total",
    "kept",
    "dropped_empty",
    "dropped_too_short",
    "dropped_undecodable",
    "skipped_too_large",
    "skipped_error",
    "skipped_timeout",
    "skipped_crash",
    "skipped_missing",
    "decoded_lossy",
)

_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([a-zA-Z0-9_.:\-]+)""", re.I)
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_BOMS_16 = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
# WHATWG: these labels mean windows-1252, which is a superset that browsers decode with
_AS_CP1252 = {"latin-1", "ascii", "iso8859-1"}
_GARBAGE = re.compile(r"[\ufffd\x00-\x08\x0b\x0e-\x1f\x7f]")
_MAX_GARBAGE = 0.05
_NO_TIMEOUT_S = 1e6  # ~11 days: what an infinite per-page timeout becomes


def codec_name(label: str | None) -> str | None:
    """Python's codec for a charset label; None if unknown or not ASCII-compatible."""
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip().strip("\"'")).name
    except LookupError:
        return None
    if name.startswith(("utf-16", "utf-32")):  # without a BOM and NUL-free it cannot be these
        return None
    return "cp1252" if name in _AS_CP1252 else name


def sniff_meta_charset(payload: bytes) -> str | None:
    """The charset a <meta> tag in the first 4 KiB declares (as a codec name), or None."""
    m = _META_CHARSET.search(payload[:4096])
    return codec_name(m.group(1).decode("ascii")) if m else None


def decode_html(payload: bytes, header_charset: str | None) -> tuple[str | None, str]:
    """(text, how): how is bom|utf-8|header|meta|lossy; text None if binary or garbage."""
    if b"\x00" in payload[:8192] and not payload.startswith(_BOMS_16):
        return None, "binary"  # no HTML page outside UTF-16 holds NUL bytes
    text, how = _decode(payload, header_charset)
    if len(_GARBAGE.findall(text)) > _MAX_GARBAGE * max(len(text), 1):
        return None, "garbage"
    return text, how


def _decode(payload: bytes, header_charset: str | None) -> tuple[str, str]:
    for bom, name in _BOMS:
        if payload.startswith(bom):
            return payload[len(bom) :].decode(name, errors="replace"), "bom"
    try:
        return payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    declared = [(codec_name(header_charset), "header"), (sniff_meta_charset(payload), "meta")]
    for name, how in declared:
        if name:
            try:
                return payload.decode(name), how
            except UnicodeDecodeError:
                continue
    fallback = next((name for name, _ in declared if name), "utf-8")
    return payload.decode(fallback, errors="replace"), "lossy"


def extract_main_text(
    html: str, favor_precision: bool, include_comments: bool, include_tables: bool = True
) -> str | None:
    """trafilatura's main text of a page, None when it finds none (runs in the sandbox)."""
    return trafilatura.extract(
        html,
        favor_precision=favor_precision,
        include_comments=include_comments,
        include_tables=include_tables,
        deduplicate=False,
        with_metadata=False,
    )


Extractor = Callable[[str, bool, bool, bool], "str | None"]


def prepare(record: WarcRecord, counts: Counter[str]) -> str | None:
    """The decoded HTML of one record, or None with the reason tallied in `counts`."""
    if record.payload_status == "too_large":
        counts["skipped_too_large"] += 1
        return None
    if record.payload is None:
        counts["skipped_error"] += 1
        return None
    html, how = decode_html(record.payload, record.charset)
    if html is None:
        counts["dropped_undecodable"] += 1
        return None
    if how == "lossy":
        counts["decoded_lossy"] += 1
    return html


def judge_text(
    status: str, value: object, url: str | None, cfg: ExtractConfig, counts: Counter[str]
) -> str | None:
    """The kept text for one sandbox result, or None with the reason tallied."""
    if status != "ok":
        counts[f"skipped_{status}"] += 1
        log.warning("%s: extraction %s%s", url, status, f": {value}" if value else "")
        return None
    if value is None:
        counts["dropped_empty"] += 1
        return None
    text = str(value)
    if len(text) < cfg.min_chars:
        counts["dropped_too_short"] += 1
        return None
    counts["kept"] += 1
    return text


class _InProcess:
    """The sandbox's interface without processes: workers = 0."""

    def __init__(self, fn: Extractor) -> None:
        self.fn = fn

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def map(self, inputs: Iterable[tuple]) -> Iterator[tuple[str, object]]:
        for args in inputs:
            try:
                yield "ok", self.fn(*args)
            except Exception as exc:  # one bad page must not stop the WARC
                yield "error", f"{type(exc).__name__}: {exc}"


def extract_docs(
    warc: Path,
    records: Path,
    out: Path,
    cfg: ExtractConfig,
    warc_name: str | None = None,
    extractor: Extractor = extract_main_text,
) -> tuple[dict[str, int], int]:
    """docs.parquet from the kept rows of records.parquet; returns (counts, characters kept)."""
    kept = pq.read_table(
        records, columns=["id", "offset", "url", "host"], filters=[("keep", "=", True)]
    ).to_pylist()
    wanted = {(r["offset"], r["id"]): r for r in kept}
    counts: Counter[str] = Counter(total=len(wanted))
    warc_name = warc_name or Path(warc).name
    found = 0
    pending: deque[tuple[WarcRecord, dict]] = deque()  # pages in the sandbox, in order

    def jobs() -> Iterator[tuple[str, bool, bool, bool]]:
        nonlocal found
        for rec in read_records_at(
            warc, (r["offset"] for r in kept), payload=True, max_payload_bytes=cfg.max_html_bytes
        ):
            row = wanted.get((rec.offset, rec.record_id))
            if row is None:  # a request / metadata record sharing the member, or not kept
                continue
            found += 1
            html = prepare(rec, counts)
            if html is not None:
                pending.append((rec, row))
                yield html, cfg.favor_precision, cfg.include_comments, cfg.include_tables

    if cfg.workers:
        # timeout_s=inf (no timeout) is valid config; the sandbox's waits need a finite number
        timeout = min(cfg.timeout_s, _NO_TIMEOUT_S)
        pool = Sandbox(extractor, cfg.workers, timeout, cfg.worker_memory_mb)
    else:
        pool = _InProcess(extractor)
    chars = 0
    batch: list[dict] = []
    with pq.ParquetWriter(out, DOCS_SCHEMA) as writer, pool:
        for status, value in pool.map(jobs()):
            rec, row = pending.popleft()
            text = judge_text(status, value, rec.target_uri, cfg, counts)
            if text is None:
                continue
            chars += len(text)
            batch.append(
                {
                    "id": rec.record_id,
                    "url": row["url"],
                    "host": row["host"],
                    "warc": warc_name,
                    "date": rec.date,
                    "text": text,
                    "length": len(text),
                }
            )
            if len(batch) >= ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(batch, schema=DOCS_SCHEMA))
                batch = []
        if batch or not counts["kept"]:  # a WARC with no documents still gets a valid file
            writer.write_table(pa.Table.from_pylist(batch, schema=DOCS_SCHEMA))
    counts["skipped_missing"] = len(wanted) - found
    if counts["skipped_missing"]:
        log.warning("%s: %d kept records not found in the WARC", warc_name, len(wanted) - found)
    return {k: counts[k] for k in COUNT_KEYS}, chars


@task(name="extract", task_run_name="extract[{warc.warc}]")
def extract_text(root: str, warc: Manifest, filtered: Manifest, cfg: ExtractConfig) -> Manifest:
    """Main text of every HTML response that passed the URL filter."""
    if warc.warc is None:
        raise ValueError(f"extract needs a download manifest, got stage {warc.stage!r}")
    key = stage_key(STAGE_VERSION, warc, filtered, cfg)
    started = time.monotonic()
    with ArtifactWriter(Path(root), "extract", key, warc=warc.warc) as out:
        counts, chars = extract_docs(
            warc.path(Path(root), warc.warc),
            filtered.path(Path(root), "records.parquet"),
            out.path("docs.parquet"),
            cfg,
            warc_name=warc.warc,
        )
        log.info(
            "%s: kept %d of %d pages (%d chars) in %.1fs",
            warc.warc,
            counts["kept"],
            counts["total"],
            chars,
            time.monotonic() - started,
        )
        return out.commit(cfg, counts=counts, stats={"chars": chars})
