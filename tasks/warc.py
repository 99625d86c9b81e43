"""Streaming WARC reader: a .warc.gz (one gzip member per record) or a plain .warc -> records.

The file is never held in memory. A gzip WARC is walked member by member with
`zlib.decompressobj(wbits=31)`, so each member's byte offset is known and a bad
member costs only its own record(s):

- a member that fails to inflate (bad data, CRC or length check) is counted
  `corrupt_member` and reading resumes at the next gzip header found by scanning
  forward for b"\\x1f\\x8b\\x08" (a damaged stretch counts once, however many false
  headers it holds);
- a member cut off by the end of the file is counted `truncated_tail` (once, with a
  warning naming the file): every complete record before the cut is still read, and a
  whole-file gzip stream (one member holding every record) cut mid-way yields every
  record fully inflated before the cut; only the half record is dropped;
- a file whose first bytes are damaged is read from the first intact member found in
  its first 2 MiB (the damage counted `corrupt_member`), not refused as "not a WARC".

Whether a file is a WARC at all is told from its first bytes (`sniff` on `read_head`),
so a caller can refuse a 5 GB HTML page before copying or hashing it; the refusal says
what the file looks like ("an HTML page", "an ARC file", "empty", "a gzip file of ...")
and shows at most its first 8 bytes, as hex.

A plain WARC is split the same way by its `Content-Length` headers (a "member" is
then one record; a bad header resumes at the next line starting "WARC/1.").

Each member is inflated into a spooled buffer (RAM up to 8 MiB, then a temp file)
and only yielded once its CRC checked, then parsed by warcio, which reads the
HTTP headers and undoes chunked / gzip transfer encodings. Payloads are read only
when asked for and at most `max_payload_bytes` (default 8 MiB) of them; a bigger
payload is counted `too_large` and not materialised.

A record warcio cannot read, or whose WARC Content-Length is missing or not a
number, is counted `corrupt_record` and reading resumes at the next "WARC/1." line of
the same member (a whole-file gzip stream is one member holding every record).

Counts a reader adds to the `counts` Counter it is given: corrupt_member,
truncated_tail, corrupt_record (a record in an intact member that is not readable),
too_large, payload_error (a payload whose transfer encoding is broken).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

from warcio.archiveiterator import ArchiveIterator

from fineflow.errors import FineflowError

log = logging.getLogger("fineflow.warc")

WarcFormat = Literal["gzip", "plain"]
PayloadStatus = Literal["ok", "not_read", "too_large", "error"]

GZIP_MAGIC = b"\x1f\x8b\x08"  # gzip id bytes + CM=8 (deflate), the only method in use
DEFAULT_MAX_PAYLOAD = 8 << 20
_FILE_BUFFER = 1 << 20  # members are ~10-100 KB; seeking back within this buffer is free
_READ_CHUNK = 1 << 16
SNIFF_BYTES = 1 << 16  # the first bytes `sniff` needs (more only for a damaged start)
_MAX_OUT = 1 << 22  # inflate at most this much per call, so a zip bomb cannot fill RAM
_SPOOL_BYTES = 8 << 20
_MAX_HEADER_LINE = 1 << 16
_MAX_HEADER_LINES = 1000
_PLAIN_RESYNC = b"\nWARC/1."
_DAMAGED_START_SCAN = 2 << 20  # bigger than nearly every record (CC caps payloads at 1 MiB)
_CHARSET = re.compile(r"""charset\s*=\s*["']?\s*([^"';\s]+)""", re.IGNORECASE)


class WarcFormatError(FineflowError, ValueError):
    """The file is not a WARC (neither gzip members nor a plain file starting "WARC/")."""


@dataclass(frozen=True, slots=True)
class WarcRecord:
    """One WARC record's headers, and its payload when it was asked for."""

    offset: int  # byte offset of the gzip member (or plain record) holding this record
    warc_type: str  # response, request, metadata, warcinfo, revisit, resource, ...
    record_id: str  # the uuid of WARC-Record-ID, without "<urn:uuid:" and ">"
    target_uri: str | None
    date: str | None  # WARC-Date, as written
    status: int | None  # HTTP status; None for records without HTTP headers
    content_type: str | None  # lowercased mime type, no parameters
    charset: str | None  # lowercased charset parameter of the HTTP Content-Type
    payload: bytes | None = None  # the HTTP body (de-chunked, decoded); None unless "ok"
    payload_status: PayloadStatus = "not_read"


@dataclass(frozen=True, slots=True)
class IntegrityReport:
    path: str
    format: WarcFormat
    bytes: int
    members: int  # members (plain WARC: records) that read back intact
    corrupt_members: int
    truncated_tail: int  # 1 if the file ends inside a member (the records before it are read)
    tail_records: int = 0  # complete records read from that cut member (a whole-file stream)

    @property
    def truncated(self) -> bool:
        """The file ends inside a member."""
        return self.truncated_tail > 0

    @property
    def records_readable(self) -> bool:
        """At least one complete record (an intact member, or one before the cut)."""
        return self.members + self.tail_records > 0


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


def detect_format(path: Path) -> WarcFormat:
    """ "gzip" or "plain"; raises WarcFormatError naming the file if it is not a WARC."""
    path = Path(path)
    with open(path, "rb") as f:
        return sniff(read_head(f.read), path)


def read_head(read: Callable[[int], bytes]) -> bytes:
    """A file's first bytes for `sniff`, through `read` (a file's, a response's): the first
    SNIFF_BYTES, or up to 2 MiB when those do not start like a WARC (a damaged start is
    told from an intact record further in); fewer only when the file is shorter. The
    caller writes them out before the rest of the stream."""
    head = _read_upto(read, SNIFF_BYTES)
    if len(head) == SNIFF_BYTES and not head.startswith((b"WARC/", GZIP_MAGIC)):
        head += _read_upto(read, _DAMAGED_START_SCAN - len(head))
    return head


def _read_upto(read: Callable[[int], bytes], n: int) -> bytes:
    parts, got = [], 0
    while got < n and (chunk := read(n - got)):  # a response may return short reads
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def sniff(head: bytes, where: str | Path) -> WarcFormat:
    """ "gzip" or "plain" for a file whose first bytes are `head` (`read_head`); raises
    WarcFormatError naming `where` and saying what the file looks like if it is no WARC.

    Only the first bytes decide, so a 5 GB file that is not a WARC is refused before it
    is copied or hashed. A WARC whose first record is damaged at its very start is told
    from an intact gzip member or plain record within `head`; the damage is then counted
    `corrupt_member` by the reader like any other."""
    if not head:
        raise WarcFormatError(f"{where}: not a WARC file (it is empty)", hint=_EMPTY_HINT)
    if head.startswith(b"WARC/"):
        return "plain"
    if head.startswith(GZIP_MAGIC):
        try:
            first = zlib.decompressobj(31).decompress(head, 64)
        except zlib.error:  # a damaged first member: the members after it may be fine
            return "gzip"
        if len(first) >= 5 and not first.startswith(b"WARC/"):
            raise WarcFormatError(
                f"{where}: a gzip file, but not a WARC: it inflates to {_looks_like(first)}",
                hint=_hint_for(first),
            )
        return "gzip"
    if fmt := _after_damaged_start(head):
        log.warning("%s: damaged start; reading from the first intact %s record", where, fmt)
        return fmt
    raise WarcFormatError(
        f"{where}: not a WARC file: it looks like {_looks_like(head)}", hint=_hint_for(head)
    )


_NOT_A_WARC_HINT = (
    "fineflow reads WARC files (gzip members, as Common Crawl's .warc.gz, or a plain .warc): "
    "check that the source points at the WARC itself, or leave it out of sources.warcs"
)
_EMPTY_HINT = "the file has no bytes: fetch it again, or leave it out of sources.warcs"
_ARC_HINT = (
    "ARC is the format before WARC: convert it first (e.g. warctools' arc2warc), "
    "or leave it out of sources.warcs"
)
_BINARY_KINDS = (  # (magic, words), matched at the very start
    (b"filedesc://", "an ARC file"),
    (b"PK\x03\x04", "a zip archive"),
    (b"BZh", "bzip2 data"),
    (b"\xfd7zXZ\x00", "xz data"),
    (b"\x28\xb5\x2f\xfd", "zstd data"),
    (b"%PDF", "a PDF document"),
)
_TEXT_KINDS = (  # (start, words), matched after a BOM and white space, in lower case
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"<head", "an HTML page"),
    (b"<?xml", "an XML document"),
    (b"{", "JSON"),
)


def _looks_like(data: bytes) -> str:
    """What a file's first bytes seem to be, in words, and at most 8 of them, as hex (the
    file's content is input: it is never echoed as text)."""
    shown = f"starts with {data[:8].hex()}"
    kind = next((words for magic, words in _BINARY_KINDS if data.startswith(magic)), None)
    text = data.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    kind = kind or next((words for start, words in _TEXT_KINDS if text.startswith(start)), None)
    if kind is None:
        sample = data[:512]
        try:
            sample.decode("utf-8")
            is_text = True
        except UnicodeDecodeError as exc:  # a multi-byte character cut at the end is text
            is_text = exc.start >= len(sample) - 3
        is_text = is_text and not any(b < 32 and b not in b"\t\n\f\r" for b in sample)
        kind = "text" if is_text else "binary data"
    return f"{kind} ({shown})"


def _hint_for(data: bytes) -> str:
    return _ARC_HINT if data.startswith(b"filedesc://") else _NOT_A_WARC_HINT


def _after_damaged_start(head: bytes) -> WarcFormat | None:
    """The format of a WARC whose first record is damaged at its very start: a gzip
    member that inflates to "WARC/", or a plain record after a record separator, within
    `head` (up to `_DAMAGED_START_SCAN` bytes). The damaged stretch is then counted
    `corrupt_member` like any other, instead of the whole file being refused."""
    i = head.find(GZIP_MAGIC, 1)
    while i != -1:
        try:
            if zlib.decompressobj(31).decompress(head[i:], 64).startswith(b"WARC/"):
                return "gzip"
        except zlib.error:
            pass
        i = head.find(GZIP_MAGIC, i + 1)
    return "plain" if b"\r\n\r\nWARC/1." in head else None


def iter_records(
    path: Path,
    *,
    payload: bool = False,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
    counts: Counter[str] | None = None,
) -> Iterator[WarcRecord]:
    """Every readable record of the file in order; damage is skipped and counted."""
    path = Path(path)
    counts = Counter() if counts is None else counts
    fmt = detect_format(path)
    with open(path, "rb", buffering=_FILE_BUFFER) as f:
        size = os.fstat(f.fileno()).st_size
        for offset, data, _ in _units(f, fmt, size, counts, _spool, path):
            yield from _parse_unit(offset, data, payload, max_payload_bytes, counts, path)


def read_records_at(
    path: Path,
    offsets: Iterable[int],
    *,
    payload: bool = True,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
    counts: Counter[str] | None = None,
) -> Iterator[WarcRecord]:
    """The records of the members starting at `offsets` (sorted, each once), and no others.

    An offset where no intact member starts is counted `corrupt_member` (or
    `truncated_tail`) and skipped, like damage met while streaming; a gzip member cut off
    by the end of the file yields the complete records inflated before the cut, as
    `iter_records` does (a whole-file gzip stream is one member at offset 0).
    """
    path = Path(path)
    counts = Counter() if counts is None else counts
    fmt = detect_format(path)
    read_one = _inflate_member if fmt == "gzip" else _copy_plain_record
    with open(path, "rb", buffering=_FILE_BUFFER) as f:
        for offset in sorted(set(offsets)):
            data = _spool()
            try:
                status, _ = read_one(f, offset, data)
                if status == "eof":
                    counts["truncated_tail"] += 1
                    log.warning("%s: truncated: the file ends inside offset %d", path, offset)
                    if fmt == "plain" or not _keep_complete_records(data):
                        continue
                elif status != "ok":
                    counts["corrupt_member"] += 1
                    log.warning("%s: no intact member at offset %d (%s)", path, offset, status)
                    continue
                yield from _parse_unit(offset, data, payload, max_payload_bytes, counts, path)
            finally:
                data.close()


def read_at(
    path: Path, offset: int, *, payload: bool = True, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD
) -> list[WarcRecord]:
    """The record(s) of the one member at `offset` (of a member cut off by the end of the
    file: its complete records); WarcFormatError if there is none there."""
    counts: Counter[str] = Counter()
    records = list(
        read_records_at(
            path, [offset], payload=payload, max_payload_bytes=max_payload_bytes, counts=counts
        )
    )
    if not records and (counts["corrupt_member"] or counts["truncated_tail"]):
        raise WarcFormatError(f"{path}: no intact WARC member at offset {offset}")
    return records


def check_integrity(path: Path) -> IntegrityReport:
    """Inflate (or walk) the whole file once, keeping nothing, and say what is damaged."""
    path = Path(path)
    fmt = detect_format(path)
    counts: Counter[str] = Counter()
    members = tail_records = 0
    with open(path, "rb", buffering=_FILE_BUFFER) as f:
        size = os.fstat(f.fileno()).st_size
        for _, _, salvaged in _units(f, fmt, size, counts, _Discard, path):
            if salvaged is None:
                members += 1
            else:
                tail_records = salvaged
    return IntegrityReport(
        path=str(path),
        format=fmt,
        bytes=size,
        members=members,
        corrupt_members=counts["corrupt_member"],
        truncated_tail=counts["truncated_tail"],
        tail_records=tail_records,
    )


# --- splitting a file into members -------------------------------------------------------


def _spool() -> Any:
    return tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)


class _Discard:
    def write(self, data: bytes, /) -> int:
        return len(data)

    def close(self) -> None:
        pass


def _units(
    f: BinaryIO,
    fmt: WarcFormat,
    size: int,
    counts: Counter[str],
    new_sink: Callable[[], Any],
    path: Path,
) -> Iterator[tuple[int, Any, int | None]]:
    """(offset, sink holding the member's bytes, None) for each intact member; counts the
    rest. A gzip file cut inside a member ends with (that member's offset, a spool of the
    complete records inflated before the cut, how many), when there are any."""
    if fmt == "gzip":
        read_one, find_next = _inflate_member, _find_gzip_member
    else:
        read_one, find_next = _copy_plain_record, _find_plain_record
    pos = 0
    stretch: int | None = None  # where the damaged stretch we are in began: counted once
    cut: int | None = None  # its first member that ran into the end of the file
    while True:
        if fmt == "plain":
            pos = _skip_blank_lines(f, pos)
        if pos >= size:
            break
        sink = new_sink()
        status, end = read_one(f, pos, sink)
        if status == "ok":
            if stretch is not None:
                # a member that "ran to EOF" but has an intact one after it was damaged, not cut
                counts["corrupt_member"] += 1
                log.warning("%s: corrupt member at offset %d skipped", path, stretch)
                stretch = cut = None
            try:
                yield pos, sink, None
            finally:
                sink.close()
            pos = end
            continue
        sink.close()
        stretch = pos if stretch is None else stretch
        cut = pos if cut is None and status == "eof" else cut
        # the bytes of a cut member may hold false headers: they fail too, and the end of
        # the file decides whether the stretch was damage or the cut
        nxt = find_next(f, pos + 1)
        if nxt is None:
            break
        pos = nxt
    if stretch is None:
        return
    if cut is None or stretch < cut:  # damage before the cut, or no cut at all
        counts["corrupt_member"] += 1
        log.warning("%s: corrupt member at offset %d skipped", path, stretch)
    if cut is None:
        return
    counts["truncated_tail"] += 1
    if fmt == "plain":
        log.warning("%s: truncated: the file ends inside the record at offset %d", path, cut)
        return
    data = _spool()
    try:
        _inflate_member(f, cut, data)  # "eof" again; what inflated before the cut is in data
        n = _keep_complete_records(data)
        log.warning(
            "%s: truncated: the file ends inside the gzip member at offset %d; "
            "%d complete record(s) read from it before the cut",
            path,
            cut,
            n,
        )
        if n:
            yield cut, data, n
    finally:
        data.close()


def _keep_complete_records(data: Any) -> int:
    """Cut `data` (a seekable spool: the inflated start of a gzip member cut off by the end
    of the file) after its last complete record; return how many complete records it
    holds. Records are walked by their Content-Length as in a plain WARC; a damaged one
    is stepped over (the parser counts it `corrupt_record`), the cut one is dropped."""
    size = data.seek(0, os.SEEK_END)
    pos = keep = n = 0
    while True:
        pos = _skip_blank_lines(data, pos)
        if pos >= size:
            keep = size
            break
        status, end = _copy_plain_record(data, pos, _Discard())
        if status == "ok":
            n += 1
            pos = keep = end
            continue
        if status == "eof":  # the record the cut runs through
            break
        nxt = _find_plain_record(data, pos + 1)
        if nxt is None:
            break
        pos = nxt
    data.truncate(keep)
    data.seek(0)
    return n


def _inflate_member(f: BinaryIO, offset: int, sink: _Sink) -> tuple[str, int]:
    """Inflate the gzip member at `offset` into `sink`: ("ok", end) | ("corrupt"|"eof", offset)."""
    f.seek(offset)
    head = f.read(4)
    if len(head) < 4 or not head.startswith(GZIP_MAGIC) or head[3] & 0xE0:
        return ("eof" if len(head) < 4 and GZIP_MAGIC.startswith(head) else "corrupt"), offset
    f.seek(offset)
    d = zlib.decompressobj(31)
    pos = offset
    while chunk := f.read(_READ_CHUNK):
        data = chunk
        try:
            while data and not d.eof:
                sink.write(d.decompress(data, _MAX_OUT))
                data = d.unconsumed_tail
        except zlib.error:  # bad deflate data, or the CRC32 / ISIZE trailer does not match
            return "corrupt", offset
        if d.eof:
            return "ok", pos + len(chunk) - len(d.unused_data)
        pos += len(chunk)
    return "eof", offset


def _find_gzip_member(f: BinaryIO, start: int) -> int | None:
    """Offset of the next plausible gzip header at or after `start`."""

    def plausible(buf: bytes, i: int) -> bool:
        return not buf[i + 3] & 0xE0  # reserved FLG bits must be zero

    return _scan(f, start, GZIP_MAGIC, 1, plausible)


def _find_plain_record(f: BinaryIO, start: int) -> int | None:
    hit = _scan(f, max(start - 1, 0), _PLAIN_RESYNC, 0, lambda buf, i: True)
    return None if hit is None else hit + 1


def _scan(
    f: BinaryIO,
    start: int,
    needle: bytes,
    extra: int,
    accept: Callable[[bytes, int], bool],
) -> int | None:
    """First offset >= start where `needle` (+ `extra` bytes) occurs and `accept` agrees."""
    f.seek(start)
    base, buf = start, b""
    keep = len(needle) + extra - 1
    while chunk := f.read(_READ_CHUNK):
        buf += chunk
        i = buf.find(needle)
        while i != -1 and i + len(needle) + extra <= len(buf):
            if accept(buf, i):
                return base + i
            i = buf.find(needle, i + 1)
        cut = max(len(buf) - keep, 0)
        base, buf = base + cut, buf[cut:]
    return None


def _skip_blank_lines(f: BinaryIO, pos: int) -> int:
    f.seek(pos)
    while (line := f.readline(_MAX_HEADER_LINE)) and not line.strip():
        pos += len(line)
    return pos


def _copy_plain_record(f: BinaryIO, offset: int, sink: _Sink) -> tuple[str, int]:
    """Copy the plain record at `offset` (headers + Content-Length bytes) into `sink`."""
    f.seek(offset)
    first = f.readline(_MAX_HEADER_LINE)
    if not first.startswith(b"WARC/"):
        return ("eof" if b"WARC/".startswith(first) else "corrupt"), offset
    lines, length = [first], None
    while True:
        line = f.readline(_MAX_HEADER_LINE)
        if not line.endswith(b"\n"):
            return ("eof" if len(line) < _MAX_HEADER_LINE else "corrupt"), offset
        lines.append(line)
        if not line.strip():
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return "corrupt", offset
        if len(lines) > _MAX_HEADER_LINES:
            return "corrupt", offset
    if length is None or length < 0:
        return "corrupt", offset
    sink.write(b"".join(lines))
    left = length
    while left:
        chunk = f.read(min(left, _READ_CHUNK))
        if not chunk:
            return "eof", offset
        sink.write(chunk)
        left -= len(chunk)
    sink.write(b"\r\n\r\n")  # the record separator, so warcio reads a well-formed record
    return "ok", f.tell()


# --- parsing one member ------------------------------------------------------------------


def _parse_unit(
    offset: int,
    data: Any,
    payload: bool,
    max_payload_bytes: int,
    counts: Counter[str],
    path: Path,
) -> list[WarcRecord]:
    """The records of one member. A record warcio cannot read (or whose Content-Length
    is missing or not a number) is counted `corrupt_record`, and reading resumes at the
    next line starting "WARC/1." inside the member: a whole-file gzip stream is one
    member, and one bad record in it must not cost the records after it."""
    records: list[WarcRecord] = []
    start, damaged = 0, False
    while True:
        data.seek(start)
        it = ArchiveIterator(data)
        try:
            for rec in it:
                _check_length(rec)
                records.append(_to_record(offset, rec, payload, max_payload_bytes, counts))
                damaged = False
            return records
        except Exception as exc:  # warcio raises several types for a malformed record
            if not damaged:  # a damaged stretch counts once, however many resyncs it takes
                counts["corrupt_record"] += 1
                log.warning("%s: unreadable WARC record at offset %d: %s", path, offset, exc)
            damaged = True
            # it.offset: where the failing record starts (warcio advances it per record)
            nxt = _find_plain_record(data, max(it.offset, start) + 1)
            if nxt is None:
                return records
            start = nxt


class _BadLength(ValueError):
    pass


def _check_length(rec: Any) -> None:
    """warcio reads a missing or non-numeric Content-Length as 0 and then takes the
    record's block for the next record; refuse the record instead."""
    if rec.format == "warc":
        value = rec.rec_headers.get_header("Content-Length")
        if value is None or not value.strip().isdigit():
            raise _BadLength(f"WARC Content-Length {value!r} is not a byte count")


def _to_record(
    offset: int, rec: Any, payload: bool, max_payload_bytes: int, counts: Counter[str]
) -> WarcRecord:
    h = rec.rec_headers
    http = rec.http_headers
    uri = h.get_header("WARC-Target-URI")
    if http is None and rec.format == "warc" and rec.rec_type in ("response", "revisit", "request"):
        # warcio parses HTTP headers only under a URI starting "http:" or "https:", in lower
        # case; a scheme is case-insensitive (RFC 3986), so HTTPS://... is parsed here alike
        low = (uri or "").lower()
        if low.startswith(("http:", "https:")) and not (uri or "").startswith(("http:", "https:")):
            from warcio.recordloader import ArcWarcRecordLoader

            loader = ArcWarcRecordLoader()
            http = loader.load_http_headers(rec.rec_type, low, rec.raw_stream, rec.length)
            rec.http_headers = http  # content_stream() then undoes the transfer encodings
    status = None
    ctype_header = None
    if http is not None:
        try:
            status = int(http.get_statuscode())
        except (TypeError, ValueError):
            status = None
        ctype_header = http.get_header("Content-Type")
        # Common Crawl's detected type stands in for a missing Content-Type header
        ctype_header = ctype_header or h.get_header("WARC-Identified-Payload-Type")
    elif rec.rec_type not in ("response", "revisit", "request"):
        ctype_header = h.get_header("Content-Type")
    content_type, charset = _split_content_type(ctype_header)
    body, body_status = None, "not_read"
    if payload:
        body, body_status = _read_payload(rec, max_payload_bytes, counts)
    return WarcRecord(
        offset=offset,
        warc_type=rec.rec_type or "",
        record_id=_bare_uuid(h.get_header("WARC-Record-ID") or ""),
        target_uri=uri,
        date=h.get_header("WARC-Date"),
        status=status,
        content_type=content_type,
        charset=charset,
        payload=body,
        payload_status=body_status,
    )


def _read_payload(rec: Any, cap: int, counts: Counter[str]) -> tuple[bytes | None, PayloadStatus]:
    try:
        stream = rec.content_stream()
        parts, got = [], 0
        # warcio's readers may return short reads before the end: loop until EOF or cap
        while got <= cap and (chunk := stream.read(min(cap + 1 - got, _READ_CHUNK))):
            parts.append(chunk)
            got += len(chunk)
    except Exception:  # a broken chunked / gzip transfer encoding inside the record
        counts["payload_error"] += 1
        return None, "error"
    if got > cap:
        counts["too_large"] += 1
        return None, "too_large"
    return b"".join(parts), "ok"


def _split_content_type(value: str | None) -> tuple[str | None, str | None]:
    if not value:
        return None, None
    mime = value.split(";", 1)[0].strip().lower() or None
    m = _CHARSET.search(value)
    return mime, (m.group(1).lower() if m else None)


def _bare_uuid(record_id: str) -> str:
    rid = record_id.strip().removeprefix("<").removesuffix(">")
    return rid.removeprefix("urn:uuid:")
