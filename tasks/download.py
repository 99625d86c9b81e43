"""Stage "download": a WARC location -> `<name>.warc.gz` in the artifact store, checked end to end.

Locations: http(s):// (urllib, streamed in `chunk_bytes` pieces, resumed with a
Range request when the server answers 206, else restarted), s3:// and any other
fsspec scheme (restarted), file:// and plain paths (streamed copy). Every fetch
writes to a hidden `.part` name and renames when complete; the size is checked
against Content-Length and the whole file is inflated once (`check_integrity`):
a gzip that ends mid-member is a failed attempt. Remote fetches are retried
`retries` times with exponential backoff (`backoff_s`, doubling); a permanent
HTTP error (4xx other than 408/425/429) fails at once. The final error names the URL.

Common Crawl slices are resolved from `<base_url>crawl-data/<crawl>/warc.paths.gz`,
read as a stream and only as far as needed.

Artifact: the WARC under its own file name; manifest.warc = that name;
counts: bytes, members, corrupt_members; stats: format ("gzip" | "plain").
The artifact key is the source (uri, name, content hash of a local file), not
DownloadConfig: retries and timeouts do not change the bytes.
"""

from __future__ import annotations

import dataclasses
import gzip
import http.client
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar
from urllib.error import HTTPError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from prefect import task
from pydantic import BaseModel, ConfigDict

from fineflow.config import CommonCrawlConfig, DownloadConfig
from fineflow.sources import check_sources, local_path, source_names
from storage.artifacts import ArtifactWriter, Manifest, stage_key
from storage.fingerprint import file_sha256
from tasks.warc import IntegrityReport, WarcFormatError, check_integrity

STAGE_VERSION = 1

log = logging.getLogger("fineflow.download")
T = TypeVar("T")

USER_AGENT = "fineflow/0.1 (research pipeline; urllib)"
MAX_BACKOFF_S = 600.0  # the longest wait between two attempts
_RETRYABLE_HTTP = {408, 425, 429}  # plus every 5xx


class DownloadError(RuntimeError):
    """A WARC could not be fetched (the message names the location)."""


class _Permanent(Exception):
    """Retrying cannot help (404, a missing fsspec backend, not a WARC)."""


class _Retry(Exception):
    """This attempt failed in a way another attempt may not (short body, cut-off gzip)."""


class WarcSource(BaseModel):
    """One WARC to fetch. `content_sha256` is set for local files so editing one changes keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    name: str  # file name in the store; unique within a run
    content_sha256: str | None = None


# --- sources ---------------------------------------------------------------------------


def describe_sources(uris: list[str]) -> list[WarcSource]:
    """A WarcSource per location: a unique safe file name; local files get their sha256."""
    check_sources(uris)  # the config checked its own list; a Common Crawl slice joins here
    sources = []
    for uri, name in zip(uris, source_names(uris), strict=True):
        path = local_path(uri)
        digest = file_sha256(path) if path is not None else None
        sources.append(WarcSource(uri=uri, name=name, content_sha256=digest))
    return sources


def resolve_common_crawl(
    cfg: CommonCrawlConfig, download: DownloadConfig | None = None
) -> list[str]:
    """URLs of WARCs [offset, offset + num_warcs) of the crawl's warc.paths.gz."""
    dl = download or DownloadConfig()
    base = cfg.base_url.rstrip("/") + "/"
    listing = f"{base}crawl-data/{cfg.crawl}/warc.paths.gz"
    want = cfg.offset + cfg.num_warcs

    def attempt() -> tuple[list[str], int]:
        paths, seen = [], 0
        with _open_stream(listing, dl) as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
            for line in lines:  # the list has ~100k lines: stop as soon as we have ours
                if not (line := line.strip()):
                    continue
                if seen >= cfg.offset:
                    paths.append(line)
                seen += 1
                if seen >= want:
                    break
        return paths, seen

    try:
        paths, seen = _with_retries(listing, attempt, dl)
    except DownloadError as exc:
        raise DownloadError(f"crawl {cfg.crawl}: {exc}") from exc
    if seen < want:
        raise ValueError(
            f"crawl {cfg.crawl} lists only {seen} WARCs in {listing}; "
            f"offset {cfg.offset} + num_warcs {cfg.num_warcs} needs {want}"
        )
    return [base + p.lstrip("/") for p in paths]


# --- fetching --------------------------------------------------------------------------


def fetch(uri: str, dest: Path, cfg: DownloadConfig) -> IntegrityReport:
    """Fetch `uri` to `dest` (atomically) and check it is a complete WARC; return the check."""
    dest = Path(dest)
    part = dest.with_name(f".{dest.name}.part")
    path = local_path(uri)
    try:
        if path is not None:
            return _copy_local(path, part, dest, cfg)
        if urlsplit(uri).scheme in ("http", "https"):
            state: dict[str, str] = {}
            return _with_retries(uri, lambda: _http_attempt(uri, part, dest, cfg, state), cfg)
        return _with_retries(uri, lambda: _fsspec_attempt(uri, part, dest, cfg), cfg)
    finally:
        part.unlink(missing_ok=True)


def _socket_timeout(cfg: DownloadConfig) -> float | None:
    """timeout_s for a socket: inf (a valid config value) means none, which sockets spell None."""
    return None if math.isinf(cfg.timeout_s) else cfg.timeout_s


def _with_retries(what: str, attempt: Callable[[], T], cfg: DownloadConfig) -> T:
    attempts = cfg.retries + 1
    last: BaseException | None = None
    for i in range(attempts):
        if i:
            # doubling, up to MAX_BACKOFF_S (many retries would overflow time.sleep)
            delay = min(cfg.backoff_s * 2.0 ** min(i - 1, 64), MAX_BACKOFF_S)
            log.warning(
                "%s: attempt %d/%d failed (%s); retrying in %.1fs", what, i, attempts, last, delay
            )
            time.sleep(delay)
        try:
            return attempt()
        except _Permanent as exc:
            raise DownloadError(f"{what}: {exc}") from exc
        except (_Retry, OSError, http.client.HTTPException, EOFError) as exc:
            # OSError covers URLError, timeouts and resets; EOFError a cut-off gzip stream
            last = exc
    raise DownloadError(f"{what}: failed after {attempts} attempts; last error: {last}") from last


def _check(part: Path, dest: Path, what: str) -> IntegrityReport:
    try:
        report = check_integrity(part)
    except WarcFormatError as exc:
        raise _Permanent(f"not a WARC file: {exc}") from exc
    if report.truncated:
        raise _Retry(f"{what}: the gzip stream ends mid-member (truncated)")
    part.replace(dest)
    return dataclasses.replace(report, path=str(dest))


def _copy_local(src: Path, part: Path, dest: Path, cfg: DownloadConfig) -> IntegrityReport:
    if not src.is_file():
        raise DownloadError(f"{src}: no such WARC file")
    with open(src, "rb") as fin, open(part, "wb") as fout:
        shutil.copyfileobj(fin, fout, cfg.chunk_bytes)
    try:
        return _check(part, dest, str(src))
    except (_Retry, _Permanent) as exc:  # a local file will not be different next time
        raise DownloadError(f"{src}: {exc}") from exc


def _http_attempt(
    url: str, part: Path, dest: Path, cfg: DownloadConfig, state: dict[str, str]
) -> IntegrityReport:
    have = part.stat().st_size if part.exists() else 0
    req = Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        req.add_header("Range", f"bytes={have}-")
        if "validator" in state:  # resume only if it is still the same file
            req.add_header("If-Range", state["validator"])
    try:
        resp = urlopen(req, timeout=_socket_timeout(cfg))
    except HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:  # our partial file is no prefix of theirs: start over
            part.unlink(missing_ok=True)
            raise _Retry("server refused the resume range") from exc
        if exc.code in _RETRYABLE_HTTP or exc.code >= 500:
            raise
        raise _Permanent(f"HTTP {exc.code} {exc.reason}") from exc
    with resp:
        total = None
        if have and resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != have:
                part.unlink(missing_ok=True)
                raise _Retry(f"server resumed at byte {start}, not {have}")
            mode = "ab"
            log.info("%s: resuming at byte %d", url, have)
        else:  # 200: a fresh copy (the server ignored the Range, or the file changed)
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
            etag = resp.headers.get("ETag")
            validator = etag if etag and not etag.startswith("W/") else None
            validator = validator or resp.headers.get("Last-Modified")
            if validator:
                state["validator"] = validator
        with open(part, mode) as out:
            while chunk := resp.read(cfg.chunk_bytes):
                out.write(chunk)
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Retry(f"connection closed after {size} of {total} bytes")
    try:
        return _check(part, dest, url)
    except _Retry:
        if total is not None:  # the server sent all it has, and it is cut off: refetch whole
            part.unlink(missing_ok=True)
        raise


def _content_range(value: str | None) -> tuple[int, int | None]:
    """(first byte, total size) of "bytes first-last/total"."""
    try:
        unit, _, spec = (value or "").partition(" ")
        span, _, total = spec.partition("/")
        if unit != "bytes":
            raise ValueError
        return int(span.split("-")[0]), (None if total == "*" else int(total))
    except ValueError:
        raise _Retry(f"unreadable Content-Range {value!r}") from None


def _fsspec_open(uri: str) -> tuple[object, str]:
    scheme = urlsplit(uri).scheme
    try:
        import fsspec

        return fsspec.core.url_to_fs(uri)
    except ImportError as exc:
        raise _Permanent(
            f"reading {scheme}:// needs an fsspec backend that is not installed ({exc}); "
            f"for s3:// install s3fs"
        ) from exc
    except ValueError as exc:
        raise _Permanent(f"no fsspec filesystem for {scheme}:// ({exc})") from exc


def _fsspec_attempt(uri: str, part: Path, dest: Path, cfg: DownloadConfig) -> IntegrityReport:
    fs, path = _fsspec_open(uri)
    try:
        expected = fs.size(path)
        with fs.open(path, "rb") as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out, cfg.chunk_bytes)
    except (FileNotFoundError, PermissionError) as exc:
        raise _Permanent(f"{exc.__class__.__name__}: {exc}") from exc
    size = part.stat().st_size
    if expected is not None and size != expected:
        raise _Retry(f"copied {size} of {expected} bytes")
    return _check(part, dest, uri)


@contextmanager
def _open_stream(uri: str, cfg: DownloadConfig) -> Iterator[IO[bytes]]:
    """A readable byte stream for a small remote or local file (warc.paths.gz)."""
    path = local_path(uri)
    if path is not None:
        if not path.is_file():
            raise _Permanent(f"no such file {path}")
        with open(path, "rb") as f:
            yield f
        return
    if urlsplit(uri).scheme in ("http", "https"):
        try:
            resp = urlopen(
                Request(uri, headers={"User-Agent": USER_AGENT}), timeout=_socket_timeout(cfg)
            )
        except HTTPError as exc:
            exc.close()
            if exc.code in _RETRYABLE_HTTP or exc.code >= 500:
                raise
            raise _Permanent(f"HTTP {exc.code} {exc.reason}") from exc
        with resp:
            yield resp
        return
    fs, fpath = _fsspec_open(uri)
    try:
        f = fs.open(fpath, "rb")
    except (FileNotFoundError, PermissionError) as exc:
        raise _Permanent(f"{exc.__class__.__name__}: {exc}") from exc
    with f:
        yield f


# --- Prefect tasks ---------------------------------------------------------------------


@task(name="resolve_crawl", task_run_name="resolve_crawl[{cfg.crawl}]")
def list_common_crawl(root: str, cfg: CommonCrawlConfig) -> list[str]:
    """URLs of the configured slice of a Common Crawl crawl (`root` is only for the cache)."""
    urls = resolve_common_crawl(cfg)
    log.info("%s: %d WARC(s) from offset %d", cfg.crawl, len(urls), cfg.offset)
    return urls


def artifact_key(source: WarcSource) -> str:
    """Where `source`'s download lands: its URI (and local content), never the retry settings."""
    return stage_key(STAGE_VERSION, source)


@task(name="download", task_run_name="download[{source.name}]")
def download_warc(root: str, source: WarcSource, cfg: DownloadConfig) -> Manifest:
    """Fetch one WARC into the artifact store and check every gzip member of it."""
    key = artifact_key(source)
    started = time.monotonic()
    with ArtifactWriter(Path(root), "download", key, warc=source.name) as out:
        dest = out.path(source.name)
        report = fetch(source.uri, dest, cfg)
        if source.content_sha256 and file_sha256(dest) != source.content_sha256:
            raise DownloadError(
                f"{source.uri} changed while the run was starting (sha256 differs); run again"
            )
        log.info(
            "%s: %d bytes, %d members (%d corrupt) in %.1fs",
            source.name,
            report.bytes,
            report.members,
            report.corrupt_members,
            time.monotonic() - started,
        )
        counts = {
            "bytes": report.bytes,
            "members": report.members,
            "corrupt_members": report.corrupt_members,
        }
        stats = {"format": report.format, "source_uri": source.uri}  # before it was made safe
        return out.commit(source, counts=counts, stats=stats)
