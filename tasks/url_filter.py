"""Stage "url_filter": a WARC -> records.parquet, one row per HTTP response with keep/reason.

FineWeb's URL filter, decided from the record headers alone (no payload is read), first
match wins:

-1. "no_record_id" / "duplicate_record_id": the record has no WARC-Record-ID, or one an
   earlier response of the same WARC had. The id names the document in every later
   stage and dedup refuses a corpus whose ids repeat, so one such record would
   otherwise fail the whole run.
0. "bad_url": no target URI, or no host in it.
1. "blocklist_domain": the host or any parent domain of it (a.b.example.com ->
   b.example.com -> example.com -> com) is in the UT1 domain list. FineWeb checks the
   registered domain and the full host; the walk checks both of those and the levels
   between, with no public-suffix list (none is downloaded at run time, and a UT1 entry
   is meant to cover its subdomains). Hosts and entries lose case, port, a trailing dot
   and a leading "www.", and are compared in their IDNA form (bücher.example matches
   xn--bcher-kva.example both ways); the `host` column keeps the URL's spelling.
2. "blocklist_url": the URL is in the UT1 `urls` list. UT1 lists URLs without a scheme,
   so both sides are compared without scheme, "www." and trailing "/".
3. "banned_word": a banned word is a whole token of the lowercased URL split on
   non-alphanumerics ("sex" bans /sex-shop but not essex.example).
4. "soft_banned_words": `soft_word_threshold` (2) or more soft words are tokens of it.
5. "banned_subword": a banned subword occurs anywhere in the lowercased URL with every
   non-alphanumeric removed.
6. "status_<n>": the HTTP status is not 200 ("no_http" when there is none).
7. "not_html": the Content-Type is not text/html or application/xhtml+xml.

Blocklists: a UT1 `domains` file, a directory with `domains`/`urls` (or
`<category>/domains`), or the UT1 `.tar.gz` (members `*/<category>/domains|urls`), from a
local path or a URL; a URL is fetched once into the artifact store
(`<root>/blocklist/<key>/`) and reused. The list is compiled once into sorted 64-bit
hashes under the data root (`<root>/_compiled/blocklist/<key>/domains.u64`: 36 MB for the
4.5M-domain UT1 adult list) that every worker memory-maps, so the machine holds one
copy however many workers run (bench/url_filter.py: build time, lookups/s, memory per
worker).

Non-response records (request, metadata, warcinfo, revisit) are not rows.
records.parquet: id (record uuid), offset (int64, gzip member), url, host, date,
status (int32, null if none), content_type, keep, reason (null when kept).
Counts: total (responses), kept, dropped_<reason> (the filter's reasons and not_html
always present; status_<n>, no_http, bad_url when seen), and the reader's
skipped_corrupt_member, skipped_truncated_tail, skipped_corrupt_record.
"""

from __future__ import annotations

import fcntl
import io
import logging
import mmap
import os
import re
import shutil
import sys
import tarfile
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from hashlib import blake2b
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from fineflow.config import DownloadConfig, UrlFilterConfig
from fineflow.storage import layout
from fineflow.storage.artifacts import ArtifactWriter, Manifest, load_manifest, stage_key, verify
from fineflow.tasks.warc import WarcRecord, iter_records

STAGE_VERSION = 6  # 3: records after a bad one in a gzip member read; 4: record ids checked;
# 5: IDN hosts matched in their IDNA (xn--) form; 6: cut tails salvaged, skipped_truncated_tail

log = logging.getLogger("fineflow.url_filter")

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
FILTER_REASONS = (
    "blocklist_domain",
    "blocklist_url",
    "banned_word",
    "soft_banned_words",
    "banned_subword",
)
_TOKEN_SPLIT = re.compile(r"[^0-9a-z]+")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")
_BATCH_ROWS = 10_000
_BLOCKLIST_STAGE = "blocklist"
_COMPILED_VERSION = 1  # the compiled list's format: sorted native uint64 name_hashes
_DOMAINS_FILE, _URLS_FILE = "domains.u64", "urls.u64"

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


# --- blocklists ---------------------------------------------------------------------------


def name_hash(name: str) -> int:
    """A name's 64-bit hash, the same in every process and every run (str's own hash() is
    salted per process, so it cannot be written down and shared)."""
    digest = blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class HashSet:
    """Names held as their sorted, unique 64-bit `name_hash`es, 8 bytes a name, probed by
    binary search: an array built in this process, or a memory-mapped file that every
    process of the machine shares (the page cache holds one copy). A false hit needs a
    64-bit collision: ~2e-13 per probe at 4.5M names."""

    __slots__ = ("_keys", "_mapped")

    def __init__(self, keys: memoryview, mapped: mmap.mmap | None = None) -> None:
        self._keys = keys  # format "Q": native uint64
        self._mapped = mapped  # kept open for as long as the set lives

    @classmethod
    def of_hashes(cls, hashes: np.ndarray) -> HashSet:
        return cls(memoryview(np.unique(hashes.astype(np.uint64)).tobytes()).cast("Q"))

    @classmethod
    def of_names(cls, names: Iterable[str]) -> HashSet:
        return cls.of_hashes(np.fromiter(map(name_hash, names), dtype=np.uint64))

    @classmethod
    def open(cls, path: Path) -> HashSet:
        """The set written by `tobytes` to `path`, memory-mapped read-only."""
        with open(path, "rb") as f:
            if not os.fstat(f.fileno()).st_size:
                return cls(memoryview(b"").cast("Q"))
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return cls(memoryview(mapped).cast("Q"), mapped)

    def tobytes(self) -> bytes:
        return self._keys.tobytes()

    def __len__(self) -> int:
        return len(self._keys)

    def has_hash(self, h: int) -> bool:
        keys = self._keys
        i = bisect_left(keys, h)
        return i < len(keys) and keys[i] == h

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.has_hash(name_hash(name))


@dataclass(frozen=True, slots=True)
class Blocklist:
    """UT1 domains and URLs, normalised (see `normalize_host`, `normalize_url`), as
    HashSets: 4.5M UT1 domains take 36 MB (a Python set of them took ~0.6 GB per
    process), and with a data root they are compiled once into a file under
    `<root>/_compiled/blocklist/<key>/` that every worker maps (`load_blocklist`)."""

    domains: HashSet
    urls: HashSet

    def __len__(self) -> int:
        return len(self.domains)

    def __contains__(self, domain: str) -> bool:
        return domain in self.domains


def normalize_host(host: str) -> str:
    """Lowercase, no port, no trailing dot, no leading "www."."""
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal: the port is after the bracket
        host = host.split("]", 1)[0] + "]"
    else:
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    host = host.rstrip(".")
    return host.removeprefix("www.")


def ascii_host(host: str) -> str:
    """The IDNA (punycode) form of a host: a Unicode host (bücher.example) and its
    xn-- form (xn--bcher-kva.example, what UT1 lists and most crawlers record) must meet
    in one spelling. Python's IDNA 2003 codec, so the result depends on nothing
    installed; a host it cannot encode (an empty or over-long label) stays as it is."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def normalize_url(url: str) -> str:
    """A URL as UT1 lists it: no scheme, host normalised (IDNA), no trailing "/"."""
    url = _SCHEME.sub("", url.strip().lower(), count=1)
    host, sep, rest = url.partition("/")
    return (ascii_host(normalize_host(host.rpartition("@")[2])) + sep + rest).rstrip("/")


def host_of(url: str) -> str:
    """The normalised host of a URL ("" when it has none)."""
    try:
        netloc = urlsplit(url.strip()).netloc
    except ValueError:  # e.g. an unbalanced "[" in the host
        return ""
    return normalize_host(netloc.rpartition("@")[2])


def _entries(lines: Iterable[str]) -> Iterator[str]:
    """Non-comment, non-blank entries of a UT1 list, lowercased and stripped."""
    for line in lines:
        if "#" in line:
            line = line.split("#", 1)[0]
        entry = line.strip().lower()
        if entry:
            yield entry


_SPECIAL_LINE = re.compile(r"(?m)^(?:www\.[^\n]*|[^\n]*[#: \t\r\x80-\U0010ffff][^\n]*|[^\n]*\.)$")
_CHUNK_CHARS = 1 << 24


def parse_domains(lines: Iterable[str]) -> set[str]:
    """Domains of a UT1 `domains` list (one per line, "#" comments)."""
    out: set[str] = set()
    for e in _entries(lines):
        if e.startswith("www.") or ":" in e or e.endswith("."):
            e = normalize_host(e)
        out.add(ascii_host(e))
    return out


def _parse_domains_text(f: io.TextIOBase) -> np.ndarray:
    """The name_hashes of `parse_domains` over a whole file (unsorted, repeats kept), in
    16M-character chunks.

    Nearly all of the 4.5M UT1 lines are bare lowercase domains: hash them as they are,
    and send only the lines a regex finds unusual (comment, port, space, "www.", trailing
    dot) through the per-line normaliser, dropping their raw form's hash.
    """
    plain: list[np.ndarray] = []
    raw_special: set[str] = {""}
    special: set[str] = set()
    rest = ""
    while chunk := f.read(_CHUNK_CHARS):
        text, _, rest = (rest + chunk).lower().rpartition("\n")
        found = _SPECIAL_LINE.findall(text)
        raw_special.update(found)
        special |= parse_domains(found)
        plain.append(np.fromiter(map(name_hash, text.split("\n")), dtype=np.uint64))
        del text
    raw_special.add(rest.lower())
    special |= parse_domains([rest.lower()])
    hashes = np.concatenate([np.zeros(0, np.uint64), *plain])
    drop = np.fromiter(map(name_hash, raw_special), dtype=np.uint64)
    keep = np.fromiter(map(name_hash, special), dtype=np.uint64)
    return np.concatenate([hashes[~np.isin(hashes, drop)], keep])


def parse_urls(lines: Iterable[str]) -> set[str]:
    """URLs of a UT1 `urls` list, normalised like `normalize_url`."""
    return {normalize_url(e) for e in _entries(lines)}


def _wanted_member(name: str, categories: tuple[str, ...]) -> str | None:
    """ "domains"/"urls" if an archive member or file under a directory is one we read."""
    parts = PurePosixPath(name).parts
    if not parts or parts[-1] not in ("domains", "urls"):
        return None
    if len(parts) == 1 or parts[-2] in categories:
        return parts[-1]
    return None


def _read_into(kind: str, raw: IO[bytes], domains: list[np.ndarray], urls: set[str]) -> None:
    text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
    if kind == "domains":
        domains.append(_parse_domains_text(text))
    else:
        urls |= parse_urls(text)


def read_blocklist(path: Path, categories: Iterable[str] = ("adult",)) -> Blocklist:
    """Parse a UT1 `domains` file, a directory of UT1 lists, or a UT1 .tar.gz archive."""
    cats = tuple(categories)
    domains: list[np.ndarray] = [np.zeros(0, np.uint64)]
    urls: set[str] = set()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            kind = _wanted_member(p.relative_to(path).as_posix(), cats) if p.is_file() else None
            if kind:
                with open(p, "rb") as f:
                    _read_into(kind, f, domains, urls)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                kind = _wanted_member(member.name, cats) if member.isfile() else None
                if kind and (f := tar.extractfile(member)) is not None:
                    _read_into(kind, f, domains, urls)
    else:
        with open(path, "rb") as f:
            _read_into("domains", f, domains, urls)
    return Blocklist(HashSet.of_hashes(np.concatenate(domains)), HashSet.of_names(urls))


def compile_blocklist(
    root: Path, source: str, size: int, mtime_ns: int, cats: tuple[str, ...]
) -> Path:
    """The directory of the blocklist's HashSets as files (domains.u64, urls.u64) under
    `<root>/_compiled/blocklist/<key>/`, built once: the key is the list's path, size,
    mtime and categories, and a lock makes the workers that start together wait for the
    one that builds it. Machine-local, like a build cache: not an artifact, never
    mirrored to a remote root (each machine compiles its own in seconds)."""
    key = stage_key(_COMPILED_VERSION, source, size, mtime_ns, cats, sys.byteorder)
    final = layout.compiled_dir(root, _BLOCKLIST_STAGE, key)
    if final.is_dir():  # a directory under its final name is complete (renamed into place)
        return final
    lock = layout.locks_dir(root) / f"blocklist-{key}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes, or its holder dies
        if final.is_dir():
            return final
        for dead in final.parent.glob(f".{key}.tmp-*"):  # a killed builder's; we hold the lock
            shutil.rmtree(dead, ignore_errors=True)
        t0 = time.perf_counter()
        bl = read_blocklist(Path(source), cats)
        tmp = final.parent / f".{key}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True)
        (tmp / _DOMAINS_FILE).write_bytes(bl.domains.tobytes())
        (tmp / _URLS_FILE).write_bytes(bl.urls.tobytes())
        tmp.rename(final)
        log.info(
            "blocklist %s: %d domains, %d urls compiled into %s in %.1fs",
            source, len(bl), len(bl.urls), final, time.perf_counter() - t0,
        )  # fmt: skip
        return final


@lru_cache(maxsize=2)
def _cached_blocklist(
    path: str, size: int, mtime_ns: int, cats: tuple[str, ...], root: str | None
) -> Blocklist:
    if root is None:
        return read_blocklist(Path(path), cats)
    made = compile_blocklist(Path(root), path, size, mtime_ns, cats)
    return Blocklist(HashSet.open(made / _DOMAINS_FILE), HashSet.open(made / _URLS_FILE))


def load_blocklist(
    path: Path, categories: Iterable[str] = ("adult",), root: Path | None = None
) -> Blocklist:
    """The blocklist at `path`, memoised per process on (path, size, mtime, categories).
    With a data root it is compiled once under it and memory-mapped (`compile_blocklist`):
    every worker of the machine shares one copy; without one it is read into this process."""
    st = Path(path).stat()
    return _cached_blocklist(
        str(Path(path).resolve()),
        st.st_size,
        st.st_mtime_ns,
        tuple(categories),
        None if root is None else str(Path(root).resolve()),
    )


def fetch_blocklist(root: Path, uri: str, cfg: DownloadConfig | None = None) -> Path:
    """The local copy of a remote blocklist, fetched once into `<root>/blocklist/<key>/`."""
    # Reuses the download stage's streaming and retries; the WARC integrity check does
    # not apply to a list, so this does not go through tasks.download.fetch itself.
    from fineflow.sources import source_name
    from fineflow.tasks.download import _open_stream, _with_retries

    cfg = cfg or DownloadConfig()
    key = stage_key(1, uri)
    name = source_name(uri)
    have = load_manifest(root, _BLOCKLIST_STAGE, key)
    if have is not None and verify(root, have) is None:
        return have.path(root, name)

    def attempt() -> None:
        with _open_stream(uri, cfg) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, cfg.chunk_bytes)

    with ArtifactWriter(root, _BLOCKLIST_STAGE, key) as out:
        dest = out.path(name)
        _with_retries(uri, attempt, cfg)
        manifest = out.commit(None, stats={"uri": uri})
    log.info("blocklist %s fetched into %s", uri, manifest.dir)
    return manifest.path(root, name)


# --- the filter ---------------------------------------------------------------------------


def _words(inline: Iterable[str], file: Path | None) -> frozenset[str]:
    lines = list(inline)
    if file is not None:
        lines += file.read_text(encoding="utf-8").splitlines()
    return frozenset(w for w in _entries(lines))


@dataclass(frozen=True, slots=True)
class UrlFilter:
    """Blocklists and word lists, ready to test URLs against."""

    blocklist: Blocklist
    banned_words: frozenset[str]
    soft_banned_words: frozenset[str] = frozenset()
    soft_word_threshold: int = 2
    banned_subwords: re.Pattern[str] | None = None

    @classmethod
    def from_config(cls, cfg: UrlFilterConfig, root: Path | None = None) -> UrlFilter:
        source = cfg.blocklist
        if isinstance(source, str):  # a URL: fetched into the artifact store once
            if root is None:
                raise ValueError(f"url_filter.blocklist {source} is a URL: give the data root")
            source = fetch_blocklist(root, source)
        subwords = _words(cfg.banned_subwords, cfg.banned_subwords_file)
        # Longest first so the alternation is deterministic; re scans the URL once.
        pattern = "|".join(re.escape(w) for w in sorted(subwords, key=lambda w: (-len(w), w)))
        return cls(
            blocklist=load_blocklist(source, cfg.categories, root),
            banned_words=_words(cfg.banned_words, cfg.banned_words_file),
            soft_banned_words=_words(cfg.soft_banned_words, cfg.soft_banned_words_file),
            soft_word_threshold=cfg.soft_word_threshold,
            banned_subwords=re.compile(pattern) if pattern else None,
        )


def parent_domains(host: str) -> Iterator[str]:
    """host itself, then each parent: a.example.com, example.com, com."""
    labels = host.split(".")
    for i in range(len(labels)):
        yield ".".join(labels[i:])


def url_tokens(url: str) -> set[str]:
    """The URL's lowercase alphanumeric tokens."""
    return {t for t in _TOKEN_SPLIT.split(url.lower()) if t}


def url_reason(url: str, host: str, flt: UrlFilter) -> str | None:
    """Why a URL is dropped by the blocklists or word lists, or None."""
    domains = flt.blocklist.domains
    if any(d in domains for d in parent_domains(ascii_host(host))):
        return "blocklist_domain"
    if len(flt.blocklist.urls) and normalize_url(url) in flt.blocklist.urls:
        return "blocklist_url"
    tokens = url_tokens(url)
    if not flt.banned_words.isdisjoint(tokens):
        return "banned_word"
    if len(flt.soft_banned_words & tokens) >= flt.soft_word_threshold:
        return "soft_banned_words"
    if flt.banned_subwords is not None and flt.banned_subwords.search(
        _NON_ALNUM.sub("", url.lower())
    ):
        return "banned_subword"
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
    seen: set[str] = set()
    with pq.ParquetWriter(out, RECORDS_SCHEMA) as writer:
        for rec in records:
            if rec.warc_type != "response":
                continue
            host, reason = classify(rec, flt)
            if not rec.record_id:
                reason = "no_record_id"
            elif rec.record_id in seen:
                reason = "duplicate_record_id"
            seen.add(rec.record_id)
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


def filter_warc(
    warc: Path, out: Path, cfg: UrlFilterConfig, root: Path | None = None
) -> dict[str, int]:
    """records.parquet for one WARC file; returns the stage's counts."""
    flt = UrlFilter.from_config(cfg, root)
    reader: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    filter_records(iter_records(warc, counts=reader), flt, out, counts)
    result = {"total": 0, "kept": 0}
    result.update({f"dropped_{r}": 0 for r in (*FILTER_REASONS, "not_html")})
    result.update(counts)
    for name in ("corrupt_member", "truncated_tail", "corrupt_record"):
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
        counts = filter_warc(
            warc.path(Path(root), warc.warc), out.path("records.parquet"), cfg, Path(root)
        )
        log.info(
            "%s: kept %d of %d responses in %.1fs",
            warc.warc,
            counts["kept"],
            counts["total"],
            time.monotonic() - started,
        )
        return out.commit(cfg, counts=counts)
