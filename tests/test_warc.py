"""The streaming WARC reader on small WARCs built with warcio, intact and damaged."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pytest
from warc_factory import Capture, article, build_warc, record_id

from fineflow.config import SAMPLE_DIR
from tasks.warc import (
    WarcFormatError,
    check_integrity,
    detect_format,
    iter_records,
    read_at,
    read_records_at,
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
    # members 1+2 are one damaged stretch, 4 another; the end is not "truncated"
    assert counts == {"corrupt_member": 2}


def test_truncated_file_keeps_complete_records(tmp_path: Path) -> None:
    caps = _captures(4)
    path = tmp_path / "t.warc.gz"
    build_warc(path, caps, truncate=25)
    counts: Counter[str] = Counter()

    urls = [r.target_uri for r in _responses(path, counts, payload=True)]

    assert urls == [c.url for c in caps[:3]]
    assert counts == {"truncated": 1}
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
    assert counts == {"corrupt_member": 1, "truncated": 1}


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
        pytest.skip("no bundled sample in sample/warcs")
    counts: Counter[str] = Counter()
    records = list(iter_records(warcs[0], counts=counts))
    report = check_integrity(warcs[0])
    assert not counts
    assert report.members == len(records) and not report.corrupt_members
    assert sum(r.warc_type == "response" for r in records) > 10
