"""Stage "download": a WARC location -> `<name>.warc.gz` in the artifact store, checked end to end.

Locations: http(s):// (urllib, streamed in `chunk_bytes` pieces, resumed with a
Range request when the server answers 206, else restarted), s3:// and any other
fsspec scheme (restarted), file:// and plain paths (streamed copy). Every fetch
writes to a hidden `.part` name and renames when complete.

A crawl is never clean, so the checks refuse little, and cheaply:

- the first bytes are sniffed (`tasks.warc.sniff`) before anything else is written,
  copied or hashed: a 5 GB HTML page is refused after its first 64 KiB, saying what it
  looks like (at most 8 bytes of it, as hex);
- the size is checked against Content-Length (or the fsspec size): fewer bytes is a
  failed attempt, retried (resumed where the server allows);
- the whole file is then inflated once (`check_integrity`). A file whose gzip ends
  mid-member although every byte the server announced arrived is the server's own
  file, cut: it is accepted, the half record at its end counted `truncated_tail` (the
  reader keeps every complete record before the cut). So is a local file, as it is,
  and a response without a Content-Length. A file with no complete record at all
  (cut inside its first record, or every member corrupt) is refused.

Remote fetches are retried `retries` times with exponential backoff (`backoff_s`,
doubling); a permanent HTTP error (4xx other than 408/425/429) fails at once. Every
failure is a `DownloadError` (a FineflowError: stage "download", the WARC's name, a
hint) whose reason names the URL in words: "HTTP 404 Not Found for <url>", "connection
refused by 127.0.0.1:9", "host not found", no AWS credentials for s3://; a full disk
is `fineflow.errors.disk_full` naming the file.

Common Crawl slices are resolved from `<base_url>crawl-data/<crawl>/warc.paths.gz`,
read as a stream and only as far as needed.

Artifact: the WARC under its own file name; manifest.warc = that name;
counts: total (gzip members, or plain records), kept (intact), dropped_corrupt_member,
dropped_truncated_tail (1 when the file ends inside a record), bytes; stats: format
("gzip" | "plain"), source_uri (the location before its name was made safe).
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
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from prefect import task
from pydantic import BaseModel, ConfigDict

from fineflow.config import CommonCrawlConfig, DownloadConfig
from fineflow.errors import FineflowError, disk_full, is_disk_full
from fineflow.sources import check_sources, crawl_of, local_path, source_names
from fineflow.storage.artifacts import ArtifactWriter, Manifest, stage_key
from fineflow.storage.fingerprint import file_sha256
from fineflow.tasks.warc import IntegrityReport, WarcFormatError, check_integrity, read_head, sniff

STAGE_VERSION = 1

log = logging.getLogger("fineflow.download")
T = TypeVar("T")

USER_AGENT = "fineflow/0.1 (research pipeline; urllib)"
MAX_BACKOFF_S = 600.0  # the longest wait between two attempts
_RETRYABLE_HTTP = {408, 425, 429}  # plus every 5xx


class DownloadError(FineflowError):
    """A WARC could not be fetched: the reason names the location, the hint what to do.
    Its stage is "download"; `download_warc` fills in the WARC's name."""

    def __init__(self, reason: str, *, hint: str = "", **where: str | None) -> None:
        where["stage"] = where.get("stage") or "download"
        super().__init__(reason, hint=hint, **where)


class _Permanent(Exception):
    """Retrying cannot help (404, a missing fsspec backend, no credentials, not a WARC)."""

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(reason)
        self.reason, self.hint = reason, hint


class _Retry(Exception):
    """This attempt failed in a way another attempt may not (short body, cut-off gzip)."""


class WarcSource(BaseModel):
    """One WARC to fetch. `content_sha256` is set for local files so editing one changes keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    name: str  # file name in the store; unique within a run
    content_sha256: str | None = None

    @property
    def warc(self) -> str:
        """The WARC's name, as a per-WARC manifest says it."""
        return self.name

    def cache_identity(self) -> dict[str, str | None]:
        """What a cache key sees: a local file by its content (so a moved checkout or data
        root stays cached), a remote one by its URI; and the crawl it belongs to (dedup's
        scope reads it from the URI)."""
        where = (
            {"content_sha256": self.content_sha256} if self.content_sha256 else {"uri": self.uri}
        )
        return {"name": self.name, **where, "crawl": crawl_of(self.name, self.uri)}


# --- sources ---------------------------------------------------------------------------


def describe_sources(uris: list[str]) -> list[WarcSource]:
    """A WarcSource per location: a unique safe file name; a local file gets its sha256.

    A local file is sniffed first (its first 64 KiB): one that is not a WARC, or cannot
    be read, is not hashed (content_sha256=None) and raises nothing here; its download
    then fails naming it, and the run goes on with the others."""
    check_sources(uris)  # the config checked its own list; a Common Crawl slice joins here
    sources = []
    for uri, name in zip(uris, source_names(uris), strict=True):
        path = local_path(uri)
        digest = _local_sha256(path) if path is not None else None
        sources.append(WarcSource(uri=uri, name=name, content_sha256=digest))
    return sources


def _local_sha256(path: Path) -> str | None:
    """The sha256 of a local file that starts like a WARC; None for any other."""
    try:
        with open(path, "rb") as f:
            sniff(read_head(f.read), path)
        return file_sha256(path)
    except (WarcFormatError, OSError) as exc:
        log.warning("not hashed, its download will fail: %s", exc)
        return None


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
        raise DownloadError(f"crawl {cfg.crawl}: {exc.reason}", hint=exc.hint) from exc
    if seen < want:
        raise ValueError(
            f"crawl {cfg.crawl} lists only {seen} WARCs in {listing}; "
            f"offset {cfg.offset} + num_warcs {cfg.num_warcs} needs {want}"
        )
    return [base + p.lstrip("/") for p in paths]


# --- fetching --------------------------------------------------------------------------


def fetch(uri: str, dest: Path, cfg: DownloadConfig) -> IntegrityReport:
    """Fetch `uri` to `dest` (atomically) and check it is a WARC with at least one complete
    record; return the check (`truncated_tail` set when the file ends inside a record)."""
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
                "%s: attempt %d/%d failed (%s); retrying in %.1fs",
                what,
                i,
                attempts,
                _in_words(last, what),
                delay,
            )
            time.sleep(delay)
        try:
            return attempt()
        except _Permanent as exc:
            raise DownloadError(exc.reason, hint=exc.hint) from exc
        except (_Retry, OSError, http.client.HTTPException, EOFError) as exc:
            # OSError covers URLError, timeouts and resets; EOFError a cut-off gzip stream
            last = exc
    assert last is not None
    raise DownloadError(
        f"{what}: failed after {attempts} attempts: {_in_words(last, what)}",
        hint=_retry_hint(last, cfg),
    ) from last


def _cause(exc: BaseException) -> BaseException:
    """The socket error inside a URLError (urlopen wraps connect errors in one)."""
    wrapped = isinstance(exc, URLError) and not isinstance(exc, HTTPError)
    return exc.reason if wrapped and isinstance(exc.reason, BaseException) else exc


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or {"http": 80, "https": 443}.get(parts.scheme)
    host = parts.hostname or "?"
    return f"{host}:{port}" if port else host


def _in_words(exc: BaseException | None, url: str) -> str:
    """A failed attempt, in words that name the host and port ("connection refused by
    127.0.0.1:9") rather than a Python exception."""
    exc = _cause(exc) if exc is not None else exc
    where = _host_port(url)
    if isinstance(exc, HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(exc, socket.gaierror):
        return f"host not found: {urlsplit(url).hostname} (name lookup failed: {exc.strerror})"
    if isinstance(exc, TimeoutError):
        return f"no answer from {where} (timed out)"
    if isinstance(exc, ConnectionResetError):
        return f"connection reset by {where}"
    if isinstance(exc, ConnectionError | http.client.HTTPException):
        return f"connection to {where} broken ({type(exc).__name__}: {exc})"
    if isinstance(exc, _Retry):
        return str(exc)
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _retry_hint(exc: BaseException, cfg: DownloadConfig) -> str:
    exc = _cause(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "nothing answers on that port: check the URL's host and port, and the server"
    if isinstance(exc, socket.gaierror):
        return "check the host name in the URL, and this machine's network and DNS"
    if isinstance(exc, TimeoutError):
        return (
            "the host is slow or unreachable: check the network, or raise "
            f"download.timeout_s (now {cfg.timeout_s:g}) or download.retries (now {cfg.retries})"
        )
    return (
        f"it failed {cfg.retries + 1} times: check the URL and the network, or raise "
        "download.retries; the next run retries only this WARC"
    )


@contextmanager
def _writing(dest: Path) -> Iterator[None]:
    """ENOSPC while writing `dest` (or its .part) is no reason to retry: say the disk is full."""
    try:
        yield
    except OSError as exc:
        if (full := is_disk_full(exc)) is None:
            raise
        raise disk_full(full, dest, "download") from exc


def _sniffed(head: bytes, what: str, total: int | None) -> None:
    """Refuse a file whose first bytes are no WARC, before the rest of it is written.
    A head cut short by the connection (fewer bytes than announced) is retried instead."""
    try:
        sniff(head, what)
    except WarcFormatError as exc:
        if total is not None and len(head) < total:
            raise _Retry(f"connection closed after {len(head)} of {total} bytes") from exc
        raise _Permanent(exc.reason, exc.hint) from exc


def _check(part: Path, dest: Path, what: str) -> IntegrityReport:
    """Inflate the whole file once; accept it unless it holds no complete record."""
    try:
        report = check_integrity(part)
    except WarcFormatError as exc:
        raise _Permanent(exc.reason.replace(str(part), what), exc.hint) from exc
    if not report.records_readable:
        if report.corrupt_members:
            reason = f"{what}: no readable WARC record ({report.corrupt_members} corrupt member(s))"
        else:
            reason = f"{what}: no complete WARC record (the file ends inside its first record)"
        raise _Permanent(
            f"{reason}, {report.bytes} bytes",
            "the file is damaged at its source: fetch it again from elsewhere, "
            "or leave it out of sources.warcs",
        )
    if report.truncated:
        log.warning(
            "%s: truncated: the file ends inside a record; kept the %d complete record(s) "
            "before the cut (counted truncated_tail)",
            what,
            report.members + report.tail_records,
        )
    part.replace(dest)
    return dataclasses.replace(report, path=str(dest))


def _copy_local(src: Path, part: Path, dest: Path, cfg: DownloadConfig) -> IntegrityReport:
    """A local file, taken as it is: sniffed, copied, checked; never retried."""
    if not src.is_file():
        raise DownloadError(
            f"{src}: no such WARC file",
            hint="check the path in sources.warcs",
            path=str(src),
        )
    try:
        with open(src, "rb") as fin:
            head = read_head(fin.read)
            _sniffed(head, str(src), None)
            with _writing(dest), open(part, "wb") as fout:
                fout.write(head)
                shutil.copyfileobj(fin, fout, cfg.chunk_bytes)
        return _check(part, dest, str(src))
    except _Permanent as exc:  # a local file will not be different next time
        raise DownloadError(exc.reason, hint=exc.hint, path=str(src)) from exc
    except OSError as exc:
        if exc.filename is None or Path(exc.filename) != src:
            raise
        raise DownloadError(
            f"{src}: cannot read it ({exc.strerror})",
            hint="check the file's permissions, or leave it out of sources.warcs",
            path=str(src),
        ) from exc


def _http_error(exc: HTTPError, url: str) -> _Permanent:
    """A 4xx that retrying cannot mend, in words: "HTTP 404 Not Found for <url>"."""
    if exc.code in (401, 403):
        hint = "the server refuses access: check the URL, and whether it needs credentials"
    elif exc.code in (404, 410):
        hint = "there is no file at that URL: check it (for Common Crawl, the crawl and path)"
    else:
        hint = "the server refuses the request: check the URL"
    return _Permanent(f"HTTP {exc.code} {exc.reason} for {url}", hint)


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
        raise _http_error(exc, url) from exc
    with resp:
        total = None
        head = b""
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
            head = read_head(resp.read)
            _sniffed(head, url, total)  # before a byte of a non-WARC is written
        with _writing(dest), open(part, mode) as out:
            out.write(head)
            while chunk := resp.read(cfg.chunk_bytes):
                out.write(chunk)
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Retry(f"connection closed after {size} of {total} bytes")
    # every announced byte is here (or none were announced): a cut-off gzip is the
    # server's own file, accepted with its complete records, not fetched again
    return _check(part, dest, url)


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
            f"reading {uri} needs an fsspec backend that is not installed ({exc}); "
            "for s3:// install s3fs",
            f"install the fsspec backend for {scheme}:// (s3fs for s3://, gcsfs for gs://)",
        ) from exc
    except ValueError as exc:
        raise _Permanent(
            f"no fsspec filesystem for {scheme}://, the scheme of {uri} ({exc})",
            "use an http(s)://, s3:// or file:// URL, or a local path",
        ) from exc


_S3_CREDENTIALS_HINT = (
    "give AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
    "(~/.aws/credentials); for a public bucket read anonymously with "
    "FSSPEC_S3='{\"anon\": true}'; Common Crawl's files are also at https://data.commoncrawl.org/"
)


def _fsspec_failure(exc: Exception, uri: str) -> Exception:
    """An fsspec backend's error in words: _Permanent for no such file, access denied or no
    credentials (botocore's NoCredentialsError, maybe wrapped), _Retry for an endpoint
    that does not answer; any other error as it is."""
    chain, cur = [], exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    names = {type(e).__name__ for e in chain}
    if "NoCredentialsError" in names:
        return _Permanent(f"no AWS credentials to read {uri}", _S3_CREDENTIALS_HINT)
    if isinstance(exc, FileNotFoundError):
        return _Permanent(f"no such file: {uri}", "check the URL (bucket and key)")
    if isinstance(exc, PermissionError):
        return _Permanent(
            f"access denied to {uri} ({exc})",
            "check that the credentials given may read it; " + _S3_CREDENTIALS_HINT,
        )
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError"}:
        return _Retry(f"cannot reach the endpoint for {uri} ({exc})")
    return exc


def _fsspec_attempt(uri: str, part: Path, dest: Path, cfg: DownloadConfig) -> IntegrityReport:
    fs, path = _fsspec_open(uri)
    try:
        expected = fs.size(path)
        src = fs.open(path, "rb")
        with src:
            head = read_head(src.read)
            _sniffed(head, uri, expected)  # before a byte of a non-WARC is written
            with _writing(dest), open(part, "wb") as out:
                out.write(head)
                shutil.copyfileobj(src, out, cfg.chunk_bytes)
    except (_Permanent, _Retry, FineflowError):
        raise
    except Exception as exc:
        if Path(getattr(exc, "filename", None) or "/") == part:
            raise  # our own write failed: not the source's doing
        if (failure := _fsspec_failure(exc, uri)) is exc:
            raise
        raise failure from exc
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
            raise _Permanent(f"no such file {path}", "check the path")
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
            raise _http_error(exc, uri) from exc
        with resp:
            yield resp
        return
    fs, fpath = _fsspec_open(uri)
    try:
        f = fs.open(fpath, "rb")
    except Exception as exc:
        if (failure := _fsspec_failure(exc, uri)) is exc:
            raise
        raise failure from exc
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
    """Fetch one WARC into the artifact store and check every gzip member of it.
    Any failure is a FineflowError naming the WARC (stage "download")."""
    try:
        return _download(root, source, cfg)
    except FineflowError as exc:
        exc.stage, exc.warc = exc.stage or "download", exc.warc or source.name
        raise


def _download(root: str, source: WarcSource, cfg: DownloadConfig) -> Manifest:
    key = artifact_key(source)
    started = time.monotonic()
    local = local_path(source.uri) is not None
    with ArtifactWriter(Path(root), "download", key, warc=source.name) as out:
        dest = out.path(source.name)
        report = fetch(source.uri, dest, cfg)
        # a local file is keyed by its content; one that failed the sniff has no hash,
        # and must not be stored under a key that does not say what it holds
        if local and (source.content_sha256 is None or file_sha256(dest) != source.content_sha256):
            then = "it was no WARC then" if source.content_sha256 is None else "sha256 differs"
            raise DownloadError(
                f"{source.uri} changed while the run was starting ({then})", hint="run again"
            )
        log.info(
            "%s: %d bytes, %d members (%d corrupt%s) in %.1fs",
            source.name,
            report.bytes,
            report.members,
            report.corrupt_members,
            ", cut off inside its last record" if report.truncated else "",
            time.monotonic() - started,
        )
        counts = {  # the vocabulary of every stage: total, kept, dropped_<reason>
            "total": report.members + report.corrupt_members + report.truncated_tail,
            "kept": report.members,
            "dropped_corrupt_member": report.corrupt_members,
            "dropped_truncated_tail": report.truncated_tail,
            "bytes": report.bytes,
        }
        stats = {"format": report.format, "source_uri": source.uri}  # before it was made safe
        return out.commit(source, counts=counts, stats=stats)
