"""Stage "extract": the responses url_filter kept -> docs.parquet of their main text.

Only the kept records are read (by their gzip member offset from records.parquet, whose
rows are read a batch at a time alongside the WARC: memory does not grow with its size).
Each HTML payload (at most `max_html_bytes`, else skipped_too_large) is decoded:
a byte-order mark wins; else strict UTF-8 (valid multi-byte UTF-8 is almost never
an accident, and servers often send a stale "iso-8859-1" header for UTF-8 pages);
else UTF-8 with errors="replace" when broken sequences are rare among valid multi-byte
ones (a cut or a stray byte; counted `decoded_lossy`); else the HTTP header charset,
then a <meta> charset in the first 4 KiB, strictly, if the decoding reads plausibly:
a single-byte charset "succeeds" on any bytes, so Shift_JIS under a latin1 label would
come out as mojibake; charset-normalizer's mess ratio over the non-ASCII text says
which (`_mess`). Else charset-normalizer's detection (counted `decoded_detected`;
windows-1252 wins its ties), which a doubted declaration yields to only when it reads
clearly better; else the first declared charset (or UTF-8) with errors="replace"
(`decoded_lossy`). NUL bytes in the first 8 KiB, or more than 5% replacement or control
characters (C0 or C1), mean binary or garbage (dropped_undecodable). Then
trafilatura.extract(favor_precision, include_comments, include_tables from the config;
no metadata; no cross-page deduplication: trafilatura's `deduplicate` drops a paragraph
it has seen in earlier pages of the same process, which makes a page's text depend on
which pages happened to go through that worker before it); None -> dropped_empty, fewer
than `min_chars` characters -> dropped_too_short. An exception is logged and counted skipped_error.
With `accelerate` (the default) trafilatura runs with its pruning XPaths compiled to Python
(tasks/fast_trafilatura.py): the same text, in ~55% of the time on real pages.

Deep nesting: libxml2 stops parsing at 256 open elements and lxml returns the tree built
so far, so a page with a 100k-deep <div> nest lost all its text after the nest. A page
whose parsed tree ends deeper than 128 levels is parsed again with the tags beyond 128
levels removed, text kept (`flatten_nesting`; counted `flattened_nesting`).

Page size: `max_html_bytes` is 10 MB (was 2 MB, which lost real 2.5-2.9 MB news pages
that datatrove keeps); the whole page is extracted, not a cut of it (a cut can lose the
article of a page whose head is bloated with inline CSS/JS). Measured on a 2-core
machine with trafilatura 2.3.1 and lxml 6.2 (libxml2 2.14): a 10 MB page of dense markup
(~100k elements) takes ~7 s and ~600 MB peak RSS in-process, 890 MB of address space
in a sandbox worker, under its 2048 MB `worker_memory_mb` cap (an idle worker holds
~450 MB); a 10 MB page of inline scripts/JSON, the usual bloat, takes 0.1 s and
~180 MB; a 3 MB dense page ~2 s. So the cap never kills such a page; a dense one over
~7 MB runs past the 5 s `timeout_s` and counts skipped_timeout.

trafilatura runs in `workers` sandbox processes (tasks/sandbox.py) fed one page at a
time, the results taken back in WARC order, so docs.parquet is the same bytes for any
number of workers. None (the default) is the cores the task has: the flow gives each of
the WARCs running at once its share of the machine (one big WARC gets every core, a
crawl of many one each); a sandbox beyond the first is a fork of the one started. A page
that takes longer than `timeout_s` kills its worker (skipped_timeout, a fresh worker
takes over), a worker that dies or hits its `worker_memory_mb` address-space cap counts
skipped_crash; the rest of the WARC goes on. workers = 0 extracts in-process (no
timeout), for benchmarks and debugging.

docs.parquet: id (record uuid), url, host, warc (file name), date, text,
length (int64, characters); row groups of 1000 documents, in WARC order.
Counts: total (kept by url_filter), kept, dropped_{empty,too_short,undecodable},
skipped_{too_large,error,timeout,crash,missing}, and (kept or not) decoded_lossy,
decoded_detected (the charset detected, not declared or wrongly declared) and
flattened_nesting (parsed again with deep nesting cut).
Stats: chars (characters of text kept).

Progress: every 10 s a WARC in extraction says pages done and pages/s, and each ends
with one line (fineflow.progress: the terminal and the task's log in the UI).
"""

from __future__ import annotations

import codecs
import logging
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import trafilatura
from charset_normalizer import from_bytes
from charset_normalizer.md import mess_ratio
from lxml.html import HtmlElement
from prefect import task
from trafilatura.utils import load_html

from fineflow.config import ExtractConfig
from fineflow.progress import Ticker
from fineflow.storage import parquet
from fineflow.storage.artifacts import ArtifactWriter, Manifest, stage_key
from fineflow.tasks import fast_trafilatura
from fineflow.tasks.sandbox import NO_TIMEOUT_S, Sandbox, worker_count
from fineflow.tasks.warc import WarcRecord, read_records_at

STAGE_VERSION = 5  # 3: table text kept; 4: records after a bad one in a gzip member read;
# 5: charsets detected when the declared ones fail or read as mojibake, deep nesting
# flattened, pages up to 10 MB, and upper-case http(s) schemes read with their headers

log = logging.getLogger("fineflow.extract")

ROW_GROUP = 1000
_ROWS_BATCH = 1024  # records.parquet rows read at a time
PROGRESS_EVERY_S = 10.0  # a WARC's pages/s line in the terminal at most this often
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
    "decoded_detected",
    "flattened_nesting",
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
_GARBAGE = re.compile(r"[\ufffd\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # C1 too: no text has them
_MAX_GARBAGE = 0.05
# A declared charset whose decoding looks messier than this is doubted (charset-normalizer's
# own threshold for a decoding it accepts); mojibake of CJK or Cyrillic scores ~1
_MAX_MESS = 0.2
_UTF8_MAJORITY = 20  # valid multi-byte UTF-8 characters per broken one: UTF-8 with damage
_MESS_CONTEXT = 32  # characters either side of non-ASCII ones that the mess ratio sees
_MESS_SAMPLE = 1 << 16
_MESS_MIN_CHARS = 16  # fewer non-ASCII characters are too few to judge (and to matter)
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_TAG = re.compile(r"<[^>]*>")
_CP1252_TIE = 0.02  # mess ratio within which the detector's candidates count as equally good
# Nesting kept by flatten_nesting: far below libxml2's 256 levels (the count is rough), far
# above real pages (rarely 60 deep)
_MAX_NESTING = 128
_MARKUP = re.compile(
    r"""<!--.*?(?:-->|\Z)|<(/?)([A-Za-z][^\s/>]*)((?:[^>"']|"[^"]*"|'[^']*')*)>""", re.S
)
# Tag sets as strings: one line each instead of one line per name
_VOID = frozenset(
    "area base basefont bgsound br col embed frame hr image img input isindex keygen link "  # noqa: SIM905
    "meta param source track wbr".split()
)
_RAW_TEXT = frozenset("script style textarea title xmp iframe noembed noframes".split())  # noqa: SIM905
_CLOSES_P = frozenset(
    "address article aside blockquote details dialog div dl fieldset figcaption figure "  # noqa: SIM905
    "footer form h1 h2 h3 h4 h5 h6 header hgroup hr main menu nav ol p pre section table "
    "ul".split()
)
_CLOSES_SIBLING = frozenset("li dt dd option tr td th".split())  # noqa: SIM905
_ASCII_PROBE = b"<html lang='en'><p class=\"a\">Az 09;:/?=&#</p>"


@lru_cache(maxsize=512)
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
    try:  # HTML markup is ASCII: a codec that reads it otherwise (EBCDIC, ...) is not the page's
        if _ASCII_PROBE.decode(name) != _ASCII_PROBE.decode("ascii"):
            return None
    except (UnicodeDecodeError, LookupError):
        return None
    return "cp1252" if name in _AS_CP1252 else name


def sniff_meta_charset(payload: bytes) -> str | None:
    """The charset a <meta> tag in the first 4 KiB declares (as a codec name), or None."""
    m = _META_CHARSET.search(payload[:4096])
    return codec_name(m.group(1).decode("ascii")) if m else None


def decode_html(payload: bytes, header_charset: str | None) -> tuple[str | None, str]:
    """(text, how): how is bom|utf-8|header|meta|detected|lossy; text None if binary/garbage."""
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
    utf8 = payload.decode("utf-8", errors="replace")
    broken = utf8.count("\ufffd")
    if sum(map(len, _NON_ASCII.findall(utf8))) - broken >= _UTF8_MAJORITY * broken:
        return utf8, "lossy"  # UTF-8 with a few broken bytes (a cut or a stray byte)
    declared = [(codec_name(header_charset), "header"), (sniff_meta_charset(payload), "meta")]
    doubted: tuple[str, str, float] | None = None  # a strict decoding that looks like mojibake
    for name, how in declared:
        if name and name != "utf-8":
            try:
                text = payload.decode(name)
            except UnicodeDecodeError:
                continue
            mess = _mess(text)
            if mess <= _MAX_MESS:
                return text, how
            doubted = doubted or (text, how, mess)
    name = detect_charset(payload)
    if name:
        text = payload.decode(name, errors="replace")
        # a doubted declaration yields only to a clearly better reading
        if doubted is None or _mess(text) < doubted[2] / 2:
            return text, "detected"
    if doubted:
        return doubted[0], doubted[1]
    fallback = next((name for name, _ in declared if name), "utf-8")
    return payload.decode(fallback, errors="replace"), "lossy"


def _mess(text: str) -> float:
    """How implausible a decoding reads: charset-normalizer's mess ratio (0 clean, ~1 and up
    for mojibake) over the non-ASCII characters outside tags and the text around them, so
    that a page's ASCII markup does not dilute it; 0 when there are too few to judge."""
    text = _TAG.sub(" ", text)
    parts: list[str] = []
    end = size = chars = 0
    for m in _NON_ASCII.finditer(text):
        a, b = max(m.start() - _MESS_CONTEXT, end), m.end() + _MESS_CONTEXT
        parts.append(text[a:b])
        end, size, chars = b, size + b - a, chars + m.end() - m.start()
        if size >= _MESS_SAMPLE:
            break
    if chars < _MESS_MIN_CHARS:
        return 0.0
    return mess_ratio("".join(parts), maximum_threshold=1.0)


def detect_charset(payload: bytes) -> str | None:
    """charset-normalizer's reading of a payload (as a codec name), or None if nothing fits.

    It cannot tell the single-byte Latin code pages apart (a French windows-1252 page
    comes back windows-1250 with the same score, and "déjà" as "déjŕ"), so windows-1252,
    the web's legacy encoding by far, wins among the candidates that score about as well
    as the best."""
    matches = from_bytes(payload)
    best = matches.best()
    if best is None:
        return None
    for m in matches:
        if m.chaos <= best.chaos + _CP1252_TIE and "cp1252" in map(
            codec_name, m.could_be_from_charset
        ):
            return "cp1252"
    for m in matches:
        if name := codec_name(m.encoding):
            return name
    return None


class Extracted(NamedTuple):
    """An extractor's answer: the main text (None: none found) and what was done to get it."""

    text: str | None
    flattened: bool = False  # nesting deeper than _MAX_NESTING was cut before parsing


def extract_main_text(
    html: str,
    favor_precision: bool,
    include_comments: bool,
    include_tables: bool = True,
    accelerate: bool = True,
) -> Extracted:
    """trafilatura's main text of a page (runs in the sandbox).

    The page is parsed here, as trafilatura would (its load_html), and the tree handed to
    it; a tree whose last branch runs deeper than _MAX_NESTING may be one libxml2 stopped
    building (see flatten_nesting), and is parsed again from the flattened page.
    `accelerate`: trafilatura with its pruning XPaths compiled (tasks/fast_trafilatura.py),
    the same text in less time."""
    fast_trafilatura.use_for(accelerate)
    tree = load_html(html)
    flattened = tree is not None and _last_branch_depth(tree) > _MAX_NESTING
    if flattened:
        tree = load_html(flatten_nesting(html))
    if tree is None:  # not HTML: trafilatura.extract(html) gives None too
        return Extracted(None, flattened)
    text = trafilatura.extract(
        tree,
        favor_precision=favor_precision,
        include_comments=include_comments,
        include_tables=include_tables,
        deduplicate=False,
        with_metadata=False,
    )
    return Extracted(text, flattened)


def _last_branch_depth(tree: HtmlElement) -> int:
    """Depth of the tree's last element down its last children. When libxml2 halts at its
    depth limit nothing is added after the deepest element, so this is that depth."""
    depth, elem = 0, tree
    while len(elem):
        elem, depth = elem[-1], depth + 1
    return depth


def flatten_nesting(html: str, max_depth: int = _MAX_NESTING) -> str:
    """The page with the tags of elements nested deeper than `max_depth` removed, their
    text kept in place.

    libxml2's HTML parser (lxml, trafilatura) stops with a fatal "Excessive depth in
    document: 256" error at the 256th level of open elements (2048 with XML_PARSE_HUGE),
    and lxml hands back the tree built so far: all text after a deep nest is lost. The
    depth is counted from the tags as libxml2 would, roughly: void and self-closed
    ("<x/>") elements do not nest, a <p> is closed by a block start, an <li>, <td>, <tr>,
    <option>, <dt> or <dd> by its next sibling, an end tag closes up to its element;
    comments and the content of <script>, <style>, ... are not markup."""
    out: list[str] = []
    stack: list[str] = []
    dropped: Counter[str] = Counter()  # start tags removed, per name: their end tags go too
    copied = pos = 0
    while m := _MARKUP.search(html, pos):
        pos = m.end()
        if m.group(2) is None:  # a comment
            continue
        name = m.group(2).lower()
        drop = False
        if m.group(1):  # an end tag
            if dropped[name]:
                dropped[name] -= 1
                drop = True
            elif name in stack:
                del stack[len(stack) - 1 - stack[::-1].index(name) :]
        else:
            if stack and (
                (stack[-1] == "p" and name in _CLOSES_P)
                or (stack[-1] == name and name in _CLOSES_SIBLING)
            ):
                stack.pop()
            if name in _RAW_TEXT:  # holds no elements: skip to its end tag
                end = re.compile(rf"</{re.escape(name)}\b", re.I).search(html, pos)
                pos = end.start() if end else len(html)
            elif name in _VOID or m.group(3).endswith("/"):
                pass
            elif len(stack) >= max_depth:
                dropped[name] += 1
                drop = True
            else:
                stack.append(name)
        if drop:
            out.append(html[copied : m.start()])
            out.append(" ")
            copied = m.end()
    out.append(html[copied:])
    return "".join(out)


Extractor = Callable[[str, bool, bool, bool, bool], "Extracted | str | None"]


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
    if how in ("lossy", "detected"):
        counts[f"decoded_{how}"] += 1
    return html


def judge_text(
    status: str, value: object, url: str | None, cfg: ExtractConfig, counts: Counter[str]
) -> str | None:
    """The kept text for one sandbox result, or None with the reason tallied."""
    if status != "ok":
        counts[f"skipped_{status}"] += 1
        log.warning("%s: extraction %s%s", url, status, f": {value}" if value else "")
        return None
    if isinstance(value, Extracted):
        counts["flattened_nesting"] += value.flattened
        value = value.text
    if value is None:
        counts["dropped_empty"] += 1
        return None
    text = str(value)
    if len(text) < cfg.min_chars:
        counts["dropped_too_short"] += 1
        return None
    counts["kept"] += 1
    return text


def _rate(done: int, total: int, seconds: float) -> str:
    return f"{done}/{total} pages in {seconds:.1f}s, {done / max(seconds, 1e-9):.1f} pages/s"


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


def kept_members(records: Path) -> Iterator[tuple[int, dict[str, tuple[str, str]]]]:
    """The rows of records.parquet that url_filter kept, member by member:
    (offset, {record id: (url, host)}), offsets ascending as url_filter wrote them (WARC
    order); read a row group at a time, so a WARC's size does not show in memory."""
    names = ("offset", "id", "url", "host")
    offset, rows = -1, {}
    for batch in parquet.iter_batches(records, _ROWS_BATCH, [*names, "keep"]):
        batch = batch.filter(batch.column("keep"))
        for at, rid, url, host in zip(*(batch.column(n).to_pylist() for n in names), strict=True):
            if at != offset:
                if at < offset:
                    raise ValueError(f"{records}: offset {at} after {offset}, not in WARC order")
                if rows:
                    yield offset, rows
                offset, rows = at, {}
            rows[rid] = (url, host)
    if rows:
        yield offset, rows


def _kept_offsets(records: Path) -> tuple[int, list[int]]:
    """(rows url_filter kept, the distinct offsets of their members); two columns are read,
    and each page's offset costs ~40 bytes of Python."""
    flags = pq.read_table(records, columns=["offset", "keep"])
    kept = flags.filter(flags["keep"]).column("offset")
    return len(kept), pc.unique(kept).to_pylist()


def extract_docs(
    warc: Path,
    records: Path,
    out: Path,
    cfg: ExtractConfig,
    warc_name: str | None = None,
    extractor: Extractor = extract_main_text,
) -> tuple[dict[str, int], int]:
    """docs.parquet from the kept rows of records.parquet; returns (counts, characters kept)."""
    total, offsets = _kept_offsets(records)
    counts: Counter[str] = Counter(total=total)
    warc_name = warc_name or Path(warc).name
    found = 0
    pending: deque[tuple[WarcRecord, tuple[str, str]]] = deque()  # pages in the sandbox, in order

    def jobs() -> Iterator[tuple[str, bool, bool, bool, bool]]:
        nonlocal found
        members = kept_members(records)
        at, member = -1, {}  # the kept rows of the member being read
        for rec in read_records_at(
            warc, offsets, payload=True, max_payload_bytes=cfg.max_html_bytes
        ):
            while at < rec.offset:  # past the kept members the reader found no record in
                at, member = next(members)
            row = member.pop(rec.record_id, None)
            if row is None:  # a request / metadata record sharing the member, or not kept
                continue
            found += 1
            html = prepare(rec, counts)
            if html is not None:
                pending.append((rec, row))
                yield (
                    html, cfg.favor_precision, cfg.include_comments, cfg.include_tables,
                    cfg.accelerate,
                )  # fmt: skip

    workers = min(worker_count(cfg.workers), max(total, 1))  # no idle sandboxes
    if workers:
        # timeout_s=inf (no timeout) is valid config; the sandbox's waits need a finite number
        timeout = min(cfg.timeout_s, NO_TIMEOUT_S)
        pool = Sandbox(extractor, workers, timeout, cfg.worker_memory_mb)
    else:
        pool = _InProcess(extractor)
    chars = done = 0
    batch: list[dict] = []
    ticker = Ticker(log, every_s=PROGRESS_EVERY_S)
    with pq.ParquetWriter(out, DOCS_SCHEMA) as writer, pool:
        for status, value in pool.map(jobs()):
            rec, row = pending.popleft()
            done += 1
            if ticker.due():
                ticker.say(f"extract {warc_name}: {_rate(done, total, ticker.elapsed)}")
            text = judge_text(status, value, rec.target_uri, cfg, counts)
            if text is None:
                continue
            chars += len(text)
            batch.append(
                {
                    "id": rec.record_id,
                    "url": row[0],
                    "host": row[1],
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
    counts["skipped_missing"] = total - found
    if counts["skipped_missing"]:
        log.warning("%s: %d kept records not found in the WARC", warc_name, total - found)
    ticker.say(
        f"extract {warc_name}: {counts['kept']} of {total} pages kept, "
        f"{_rate(total, total, ticker.elapsed)}",
        force=True,
    )
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
