"""Stage "url_filter": a WARC -> records.parquet, one row per HTTP response with keep/reason.

Decided from the record headers alone (no payload is read), first match wins:

0. "bad_url": no target URI, or no host in it.
1. "blocklist_domain": the host, or any parent domain of it (a.b.example.com ->
   b.example.com -> example.com -> com), is in the UT1-format blocklist. Hosts and
   list entries are lowercased, lose their port, a trailing dot and a leading "www.".
2. "banned_word": a banned word is a whole token of the URL split on
   non-alphanumerics ("sex" bans /sex-shop but not essex.example).
3. "status_<n>": the HTTP status is not 200 ("no_http" when there is none).
4. "not_html": the Content-Type is not text/html or application/xhtml+xml.

Non-response records (request, metadata, warcinfo, revisit) are not rows.
records.parquet: id (record uuid), offset (int64, gzip member), url, host, date,
status (int32, null if none), content_type, keep, reason (null when kept).
Counts: total (responses), kept, dropped_<reason> (blocklist_domain, banned_word,
not_html always present; status_<n>, no_http, bad_url when seen), and the
reader's skipped_corrupt_member, skipped_truncated, skipped_corrupt_record.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from fineflow.config import UrlFilterConfig
from storage.artifacts import ArtifactWriter, Manifest, stage_key
from tasks.warc import WarcRecord, iter_records

STAGE_VERSION = 1

log = logging.getLogger("fineflow.url_filter")

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_TOKEN_SPLIT = re.compile(r"[^0-9a-z]+")
_BATCH_ROWS = 10_000

RECORDS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("offset", pa.int64()),
        ("url", pa.string()),
        ("host", pa.string()),
        ("date", pa.string()),
        ("status", pa.int32()),
        ("content_type", pa.string()),
        ("keep", pa.bool_()),
        ("reason", pa.string()),
    ]
)


@dataclass(frozen=True, slots=True)
class UrlFilter:
    """The blocklist and banned words, ready to test URLs against."""

    blocked_domains: frozenset[str]
    banned_words: frozenset[str]

    @classmethod
    def from_config(cls, cfg: UrlFilterConfig) -> UrlFilter:
        return cls(
            blocked_domains=load_blocklist(cfg.blocklist),
            banned_words=frozenset(w.strip().lower() for w in cfg.banned_words if w.strip()),
        )


def normalize_host(host: str) -> str:
    """Lowercase, no port, no trailing dot, no leading "www."."""
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal: the port is after the bracket
        host = host.split("]", 1)[0] + "]"
    else:
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    host = host.rstrip(".")
    return host.removeprefix("www.")


def host_of(url: str) -> str:
    """The normalised host of a URL ("" when it has none)."""
    try:
        netloc = urlsplit(url.strip()).netloc
    except ValueError:  # e.g. an unbalanced "[" in the host
        return ""
    return normalize_host(netloc.rpartition("@")[2])


def load_blocklist(path: Path) -> frozenset[str]:
    """Domains of a UT1-format list: one per line, "#" comments and blank lines ignored."""
    domains = set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            entry = line.split("#", 1)[0].strip()
            if entry:
                domains.add(normalize_host(entry))
    return frozenset(domains)


def parent_domains(host: str) -> Iterator[str]:
    """host itself, then each parent: a.example.com, example.com, com."""
    labels = host.split(".")
    for i in range(len(labels)):
        yield ".".join(labels[i:])


def url_tokens(url: str) -> set[str]:
    """The URL's lowercase alphanumeric tokens."""
    return {t for t in _TOKEN_SPLIT.split(url.lower()) if t}


def url_reason(url: str, host: str, flt: UrlFilter) -> str | None:
    """Why a URL is dropped by the blocklist or banned words, or None."""
    if any(d in flt.blocked_domains for d in parent_domains(host)):
        return "blocklist_domain"
    if flt.banned_words and not flt.banned_words.isdisjoint(url_tokens(url)):
        return "banned_word"
    return None


def classify(record: WarcRecord, flt: UrlFilter) -> tuple[str, str | None]:
    """(host, reason) for one response record; reason None means keep."""
    url = record.target_uri or ""
    host = host_of(url)
    if not host:
        return host, "bad_url"
    if reason := url_reason(url, host, flt):
        return host, reason
    if record.status != 200:
        return host, "no_http" if record.status is None else f"status_{record.status}"
    if record.content_type not in HTML_TYPES:
        return host, "not_html"
    return host, None


def filter_records(
    records: Iterable[WarcRecord], flt: UrlFilter, out: Path, counts: Counter[str]
) -> None:
    """Write one records.parquet row per response in `records`; tally `counts`."""
    rows: dict[str, list] = {name: [] for name in RECORDS_SCHEMA.names}
    with pq.ParquetWriter(out, RECORDS_SCHEMA) as writer:
        for rec in records:
            if rec.warc_type != "response":
                continue
            host, reason = classify(rec, flt)
            counts["total"] += 1
            counts["kept" if reason is None else f"dropped_{reason}"] += 1
            for name, value in (
                ("id", rec.record_id),
                ("offset", rec.offset),
                ("url", rec.target_uri),
                ("host", host),
                ("date", rec.date),
                ("status", rec.status),
                ("content_type", rec.content_type),
                ("keep", reason is None),
                ("reason", reason),
            ):
                rows[name].append(value)
            if len(rows["id"]) >= _BATCH_ROWS:
                writer.write_table(pa.table(rows, schema=RECORDS_SCHEMA))
                rows = {name: [] for name in RECORDS_SCHEMA.names}
        if rows["id"] or not counts["total"]:  # an empty WARC still gets a valid, empty file
            writer.write_table(pa.table(rows, schema=RECORDS_SCHEMA))


def filter_warc(warc: Path, out: Path, cfg: UrlFilterConfig) -> dict[str, int]:
    """records.parquet for one WARC file; returns the stage's counts."""
    flt = UrlFilter.from_config(cfg)
    reader: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    filter_records(iter_records(warc, counts=reader), flt, out, counts)
    result = {"total": 0, "kept": 0}
    result.update({f"dropped_{r}": 0 for r in ("blocklist_domain", "banned_word", "not_html")})
    result.update(counts)
    for name in ("corrupt_member", "truncated", "corrupt_record"):
        result[f"skipped_{name}"] = reader[name]
    return dict(sorted(result.items()))


@task(name="url_filter", task_run_name="url_filter[{warc.warc}]")
def filter_urls(root: str, warc: Manifest, cfg: UrlFilterConfig) -> Manifest:
    """Mark every HTTP response of a WARC kept or dropped, from its headers and URL."""
    if warc.warc is None:
        raise ValueError(f"url_filter needs a download manifest, got stage {warc.stage!r}")
    key = stage_key(STAGE_VERSION, warc, cfg)
    started = time.monotonic()
    with ArtifactWriter(Path(root), "url_filter", key, warc=warc.warc) as out:
        counts = filter_warc(warc.path(Path(root), warc.warc), out.path("records.parquet"), cfg)
        log.info(
            "%s: kept %d of %d responses in %.1fs",
            warc.warc,
            counts["kept"],
            counts["total"],
            time.monotonic() - started,
        )
        return out.commit(cfg, counts=counts)
