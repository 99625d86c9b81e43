"""The streaming WARC reader on small WARCs built with warcio, intact and damaged."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
import re
from collections import Counter
from pathlib import Path

import pytest

from fineflow.config import SAMPLE_DIR
from fineflow.errors import FineflowError
from fineflow.tasks.warc import (
    SNIFF_BYTES,
    WarcFormatError,
    check_integrity,
    detect_format,
    iter_records,
    read_at,
    read_head,
    read_records_at,
    sniff,
)
from tests.helpers.warc_factory import (
    Capture,
    article,
    build_warc,
    cut_file,
    inflated_prefix,
    png_bytes,
    record_id,
)


def _captures(n: int = 5) -> list[Capture]:
    return [Capture(f"https://site{i}.example/page/{i}", article(i).encode()) for i in range(n)]


def _responses(path: Path, counts: Counter | None = None, **kw) -> list:
    return [r for r in iter_records(path, counts=counts, **kw) if r.warc_type == "response"]


def test_records_carry_headers_and_payload(tmp_path: Path) -> None:
    caps = _captures(3) + [
        Capture("http://x.example/gone", b"nope", status=404, content_type="text/plain"),
        Capture("http://x.example/img", b"\x89PNG", content_type='image/PNG; charset="X"'),
        Capture("http://x.example/raw", b"<p>no type</p>", content_type=None),
    ]
    written = build_warc(tmp_path / "a.warc.gz", caps)
    counts: Counter[str] = Counter()
    records = list(iter_records(tmp_path / "a.warc.gz", payload=True, counts=counts))

    assert [r.warc_type for r in records[:3]] == ["warcinfo", "request", "response"]
    resp = [r for r in records if r.warc_type == "response"]
    assert [r.target_uri for r in resp] == [c.url for c in caps]
    assert [r.offset for r in resp] == [w.offset for w in written]
    first = resp[0]
    assert first.record_id == record_id(caps[0].url)  # no "<urn:uuid:" / ">"
    assert (first.status, first.content_type, first.charset) == (200, "text/html", "utf-8")
    assert first.date == "2024-03-01T00:00:00Z"
    assert first.payload == caps[0].body and first.payload_status == "ok"
    assert (resp[3].status, resp[3].content_type) == (404, "text/plain")
    assert (resp[4].content_type, resp[4].charset) == ("image/png", "x")
    assert (resp[5].content_type, resp[5].charset) == (None, None)
    assert not counts


@pytest.mark.parametrize("damage", ["corrupt_crc", "corrupt_data"])
def test_corrupt_member_loses_only_its_record(tmp_path: Path, damage: str) -> None:
    caps = _captures(5)
    path = tmp_path / "c.warc.gz"
    build_warc(path, caps, **{damage: (2,)})
    counts: Counter[str] = Counter()

    urls = [r.target_uri for r in _responses(path, counts, payload=True)]

    assert urls == [c.url for i, c in enumerate(caps) if i != 2]  # before AND after it kept
    assert counts == {"corrupt_member": 1}
    report = check_integrity(path)
    assert (report.corrupt_members, report.truncated) == (1, False)
    assert report.members == 1 + 2 * 5 - 1  # warcinfo + request/response pairs - the bad one


def test_adjacent_corrupt_members_and_corrupt_last_member(tmp_path: Path) -> None:
    caps = _captures(5)
    path = tmp_path / "c.warc.gz"
    build_warc(path, caps, requests=False, corrupt_crc=(1, 2, 4))
    counts: Counter[str] = Counter()
    urls = [r.target_uri for r in _responses(path, counts)]
    assert urls == [caps[0].url, caps[3].url]
    # members 1+2 are one damaged stretch, 4 another; the end is not "truncated_tail"
    assert counts == {"corrupt_member": 2}


def test_truncated_file_keeps_complete_records(tmp_path: Path) -> None:
    caps = _captures(4)
    path = tmp_path / "t.warc.gz"
    build_warc(path, caps, truncate=25)
    counts: Counter[str] = Counter()

    urls = [r.target_uri for r in _responses(path, counts, payload=True)]

    assert urls == [c.url for c in caps[:3]]
    assert counts == {"truncated_tail": 1}
    report = check_integrity(path)
    assert report.truncated and report.corrupt_members == 0


def test_not_a_warc_raises_naming_the_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.warc.gz"
    text.write_text("just some notes\n")
    with pytest.raises(WarcFormatError, match="notes.warc.gz"):
        check_integrity(text)
    with pytest.raises(WarcFormatError, match="notes.warc.gz"):
        list(iter_records(text))

    zipped = tmp_path / "page.html.gz"
    zipped.write_bytes(gzip.compress(b"<html><body>hello</body></html>"))
    with pytest.raises(WarcFormatError, match=r"page\.html\.gz.*not a WARC"):
        check_integrity(zipped)

    empty = tmp_path / "empty.warc"
    empty.write_bytes(b"")
    with pytest.raises(WarcFormatError, match="empty.warc"):
        detect_format(empty)


def test_plain_warc_reads_like_gzip(tmp_path: Path) -> None:
    caps = _captures(4)
    build_warc(tmp_path / "a.warc.gz", caps)
    build_warc(tmp_path / "a.warc", caps, compress=False)

    zipped = _responses(tmp_path / "a.warc.gz", payload=True)
    plain = _responses(tmp_path / "a.warc", payload=True)

    assert detect_format(tmp_path / "a.warc") == "plain"
    key = [(r.record_id, r.target_uri, r.status, r.payload) for r in zipped]
    assert [(r.record_id, r.target_uri, r.status, r.payload) for r in plain] == key
    assert check_integrity(tmp_path / "a.warc").members == 1 + 2 * 4


def test_plain_warc_damage_and_truncation(tmp_path: Path) -> None:
    caps = _captures(4)
    path = tmp_path / "a.warc"
    written = build_warc(path, caps, compress=False, requests=False)
    data = bytearray(path.read_bytes())
    data[written[1].offset : written[1].offset + 5] = b"XXXXX"  # garble record 1's "WARC/"
    path.write_bytes(bytes(data[:-40]))  # and cut into the last one
    counts: Counter[str] = Counter()

    urls = [r.target_uri for r in _responses(path, counts)]

    assert urls == [caps[0].url, caps[2].url]
    assert counts == {"corrupt_member": 1, "truncated_tail": 1}


def test_offsets_round_trip(tmp_path: Path) -> None:
    for name, compress in (("a.warc.gz", True), ("a.warc", False)):
        path = tmp_path / name
        build_warc(path, _captures(4), compress=compress)
        records = list(iter_records(path, payload=True))
        for rec in records:
            assert read_at(path, rec.offset) == [rec]
        wanted = [r.offset for r in records if r.warc_type == "response"][::2]
        again = list(read_records_at(path, reversed(wanted)))
        assert [r.offset for r in again] == wanted  # sorted, and only those members
    with pytest.raises(WarcFormatError, match="offset 3"):
        read_at(path, 3)


def test_payload_cap_and_chunked_body(tmp_path: Path) -> None:
    big = article(0).encode() * 20
    caps = [Capture("http://a.example/big", big), Capture("http://a.example/ch", big, chunked=True)]
    path = tmp_path / "p.warc.gz"
    build_warc(path, caps)

    counts: Counter[str] = Counter()
    capped = _responses(path, counts, payload=True, max_payload_bytes=len(big) - 1)
    assert [r.payload_status for r in capped] == ["too_large", "too_large"]
    assert all(r.payload is None for r in capped)
    assert counts == {"too_large": 2}

    full = _responses(path, payload=True, max_payload_bytes=len(big))
    assert [r.payload for r in full] == [big, big]  # the chunked one de-chunked

    headers_only = _responses(path)
    assert [r.payload_status for r in headers_only] == ["not_read", "not_read"]


def test_whole_file_gzip_stream(tmp_path: Path) -> None:
    """`gzip file.warc` makes one member holding every record: still readable."""
    caps = _captures(3)
    path = tmp_path / "one.warc.gz"
    build_warc(path, caps, single_stream=True)
    resp = _responses(path, payload=True)
    assert [r.target_uri for r in resp] == [c.url for c in caps]
    assert {r.offset for r in resp} == {0}
    assert check_integrity(path).members == 1


def test_bundled_sample_reads_clean() -> None:
    warcs = sorted((SAMPLE_DIR / "warcs").glob("*.warc.gz"))
    if not warcs:
        pytest.skip("no bundled sample in fineflow/sample/warcs")
    counts: Counter[str] = Counter()
    records = list(iter_records(warcs[0], counts=counts))
    report = check_integrity(warcs[0])
    assert not counts
    assert report.members == len(records) and not report.corrupt_members
    assert sum(r.warc_type == "response" for r in records) > 10


# --- salvage: a file cut off keeps every complete record before the cut -------------------


@pytest.mark.parametrize("compress", [True, False], ids=["gzip-members", "plain"])
def test_cut_inside_record_41_keeps_the_40_before_it(
    tmp_path: Path, compress: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caps = _captures(45)
    path = tmp_path / ("cut.warc.gz" if compress else "cut.warc")
    written = build_warc(path, caps, compress=compress, requests=False)
    # record 1 is the warcinfo, records 2..46 the responses: record 41 is caps[39]
    cut_file(path, (written[39].offset + written[40].offset) // 2)
    counts: Counter[str] = Counter()

    with caplog.at_level(logging.WARNING, logger="fineflow.warc"):
        records = list(iter_records(path, payload=True, counts=counts))

    assert len(records) == 40 and records[0].warc_type == "warcinfo"
    assert [r.target_uri for r in records[1:]] == [c.url for c in caps[:39]]
    assert [r.payload for r in records[1:]] == [c.body for c in caps[:39]]
    assert counts == {"truncated_tail": 1}
    assert any("cut.warc" in m and "truncated" in m for m in caplog.messages)
    report = check_integrity(path)
    assert (report.members, report.truncated_tail, report.corrupt_members) == (40, 1, 0)
    assert report.truncated and report.records_readable
    again: Counter[str] = Counter()
    assert list(read_records_at(path, [written[39].offset], counts=again)) == []
    assert again == {"truncated_tail": 1}


def test_whole_file_gzip_stream_cut_keeps_every_record_inflated_before_the_cut(
    tmp_path: Path,
) -> None:
    """`gzip file.warc` cut mid-way: the one member never ends, yet every record that fully
    inflated before the cut is read (today's reader lost them all); only the half one is not."""
    noise = [hashlib.sha256(b"%d-%d" % (i, j)).hexdigest() for i in range(24) for j in range(40)]
    caps = [  # pages that do not repeat, so the cut lands mid-way through the records
        Capture(
            f"https://s{i}.example/{i}",
            article(i, extra=" ".join(noise[i * 40 : i * 40 + 40])).encode(),
        )
        for i in range(24)
    ]
    plain = tmp_path / "one.warc"  # the same bytes the stream inflates to: record offsets
    starts = [w.offset for w in build_warc(plain, caps, requests=False, compress=False)]
    ends = [s - 4 for s in starts[1:]] + [plain.stat().st_size - 4]  # before "\r\n\r\n"
    path = tmp_path / "one.warc.gz"
    build_warc(path, caps, requests=False, single_stream=True)
    size = path.stat().st_size // 2
    while True:  # a cut that ends inside a record, not on a boundary
        have = len(inflated_prefix(path.read_bytes()[:size]))
        if not any(e <= have < s for e, s in zip(ends, starts[1:] + [10**12], strict=True)):
            break
        size += 1
    cut_file(path, size)
    complete = [i for i, e in enumerate(ends) if e <= have]
    assert 3 < len(complete) < 20  # some records before the cut, some after

    counts: Counter[str] = Counter()
    records = list(iter_records(path, payload=True, counts=counts))

    assert records[0].warc_type == "warcinfo"
    assert [r.target_uri for r in records[1:]] == [caps[i].url for i in complete]
    assert [r.payload for r in records[1:]] == [caps[i].body for i in complete]
    assert {r.offset for r in records} == {0}
    assert counts == {"truncated_tail": 1}
    report = check_integrity(path)
    tail = 1 + len(complete)  # the warcinfo record and the complete responses
    assert (report.members, report.tail_records, report.truncated_tail) == (0, tail, 1)
    assert report.records_readable
    # extract re-reads by offset: member 0 gives the same records
    assert list(read_records_at(path, [0])) == records
    assert read_at(path, 0) == records


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_cut_inside_the_first_record_has_no_record(tmp_path: Path, compress: bool) -> None:
    path = tmp_path / ("first.warc.gz" if compress else "first.warc")
    build_warc(path, _captures(2), compress=compress)
    cut_file(path, 60)
    counts: Counter[str] = Counter()
    assert list(iter_records(path, counts=counts)) == []
    assert counts == {"truncated_tail": 1}
    report = check_integrity(path)
    assert report.truncated and not report.records_readable
    with pytest.raises(WarcFormatError, match="offset 0"):
        read_at(path, 0)


def test_single_stream_cut_inside_its_first_record_has_no_record(tmp_path: Path) -> None:
    path = tmp_path / "one.warc.gz"
    build_warc(path, [Capture("https://a.example/", article(0).encode() * 4)], single_stream=True)
    cut_file(path, 400)  # inside the warcinfo record's bytes or the first response
    counts: Counter[str] = Counter()
    records = list(iter_records(path, counts=counts))
    assert [r.warc_type for r in records] in ([], ["warcinfo"]) and counts == {"truncated_tail": 1}


# --- cheap refusals: told from the first bytes, never echoed ------------------------------

_HEX = re.compile(r"starts with ([0-9a-f]*)\)")


def _refusal(data: bytes) -> WarcFormatError:
    with pytest.raises(WarcFormatError) as info:
        sniff(data, "src/x.warc.gz")
    err = info.value
    assert str(err).startswith("src/x.warc.gz: ")
    for shown in _HEX.findall(str(err)):
        assert len(shown) <= 16  # at most 8 bytes, as hex
    return err


@pytest.mark.parametrize(
    ("data", "words", "shown"),
    [
        (
            b"<!DOCTYPE html><html><body>secret token 1234</body></html>",
            "an HTML page",
            "3c21444f43545950",
        ),
        (b"\xef\xbb\xbf  <html lang=en><p>secret token 1234", "an HTML page", "efbbbf20203c6874"),
        (
            b"filedesc://IAH-2008.arc 0.0.0.0 20080430204825 text/plain 77\n1 0 secret",
            "an ARC file",
            "66696c6564657363",
        ),
        (
            b'<?xml version="1.0"?><Error><Code>AccessDenied</Code>secret',
            "an XML document",
            "3c3f786d6c207665",
        ),
        (b"just some secret notes\n", "text", "6a75737420736f6d"),
        (png_bytes(), "binary data", "89504e470d0a1a0a"),
        (b"PK\x03\x04secret", "a zip archive", "504b030473656372"),
    ],
)
def test_not_a_warc_says_what_it_looks_like(data: bytes, words: str, shown: str) -> None:
    err = _refusal(data)
    assert f"not a WARC file: it looks like {words} (starts with {shown})" in str(err)
    assert "secret" not in str(err) and "secret" not in err.hint
    assert isinstance(err, FineflowError) and isinstance(err, ValueError) and err.hint
    again = pickle.loads(pickle.dumps(err))  # Prefect carries it across processes
    assert (type(again), again.reason, again.hint) == (WarcFormatError, err.reason, err.hint)


def test_gzip_of_something_else_and_empty(tmp_path: Path) -> None:
    err = _refusal(gzip.compress(b"<html><body>secret token</body></html>"))
    assert (
        "a gzip file, but not a WARC: it inflates to an HTML page (starts with 3c68746d6c3e3c62)"
        in str(err)
    )
    err = _refusal(gzip.compress(b"filedesc://x.arc 0.0.0.0 2008 text/plain 9\nsecret"))
    assert "inflates to an ARC file" in str(err) and "arc2warc" in err.hint
    assert "it is empty" in str(_refusal(b""))
    assert "secret" not in str(err)


def test_sniff_needs_only_the_first_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.warc.gz"
    build_warc(path, _captures(3))
    data = path.read_bytes()
    assert sniff(data[:40], path) == "gzip"  # a prefix is enough
    assert sniff(b"WARC/1.0\r\nWARC-Type: warcinfo\r\n", path) == "plain"
    assert sniff(gzip.compress(b"WARC/1.0\r\n" + b"x" * 100)[:30], path) == "gzip"
    # a file's head: the first 64 KiB, more only when they do not start like a WARC
    big = io.BytesIO(b"\x00" * 100_000 + b"\r\n\r\n" + b"WARC/1.0\r\n")
    assert len(read_head(io.BytesIO(data * 40).read)) == SNIFF_BYTES
    assert (
        len(read_head(big.read)) == 100_014
        and sniff(read_head(io.BytesIO(big.getvalue()).read), "b") == "plain"
    )
