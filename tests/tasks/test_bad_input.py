"""Bad input, end to end through url_filter -> extract -> filter: each damage is skipped
with a counted reason (or rejected naming the file), and no other document is lost."""

from __future__ import annotations

import functools
import gzip
import re
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fineflow.config import (
    DownloadConfig,
    ExtractConfig,
    FilterConfig,
    MinHashConfig,
    ShardConfig,
    TokenizerConfig,
    UrlFilterConfig,
)
from fineflow.tasks.dedup import CORPUS_DB, CorpusMismatch, dedup_corpus
from fineflow.tasks.download import fetch
from fineflow.tasks.extract import extract_docs
from fineflow.tasks.filter import judge_docs
from fineflow.tasks.minhash import signatures_to_parquet
from fineflow.tasks.shard import shard_corpus
from fineflow.tasks.tokenizer import train_bpe, train_tokenizer
from fineflow.tasks.url_filter import filter_warc
from fineflow.tasks.warc import WarcFormatError, check_integrity, iter_records
from tests.helpers.e2e import corpus_manifest
from tests.helpers.warc_factory import (
    Capture,
    article,
    build_warc,
    png_bytes,
    record_id,
    response_record,
    warcinfo_record,
)

GOOD = [Capture(f"https://good{i}.example/page", article(i).encode()) for i in range(4)]
GOOD_URLS = [c.url for c in GOOD]


def run(tmp_path: Path, warc: Path, cfg: ExtractConfig | None = None) -> tuple[dict, list[str]]:
    """(extract counts, urls of the documents the filter stage kept)."""
    blocklist = tmp_path / "domains"
    blocklist.write_text("")
    records = tmp_path / "records.parquet"
    filter_warc(warc, records, UrlFilterConfig(blocklist=blocklist))
    docs, kept = tmp_path / "docs.parquet", tmp_path / "kept.parquet"
    counts, _ = extract_docs(warc, records, docs, cfg or ExtractConfig())
    judge_docs(docs, kept, tmp_path / "dropped.parquet", FilterConfig())
    return counts, [d["url"] for d in pq.read_table(kept).to_pylist()]


def test_truncated_warc_keeps_every_complete_record(tmp_path: Path) -> None:
    path = tmp_path / "t.warc.gz"
    build_warc(path, GOOD + [Capture("https://cut.example/", article(1).encode())], truncate=300)
    counts, urls = run(tmp_path, path)
    assert urls == GOOD_URLS
    assert counts["kept"] == 4


def test_crc_error_in_the_middle_costs_one_record(tmp_path: Path) -> None:
    path = tmp_path / "c.warc.gz"
    caps = GOOD[:2] + [Capture("https://bad.example/", article(2).encode())] + GOOD[2:]
    build_warc(path, caps, corrupt_crc=(2,))
    counts, urls = run(tmp_path, path)
    assert urls == GOOD_URLS  # before and after the damaged member


def test_not_a_warc_is_rejected_naming_the_file(tmp_path: Path) -> None:
    for name, data in [("page.html", b"<html>hi</html>"), ("x.gz", gzip.compress(b"hello"))]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(WarcFormatError, match=name):
            run(tmp_path, path)


def test_wrong_charset_is_decoded_or_counted(tmp_path: Path) -> None:
    latin = article(2, meta_charset=None, extra=" Café déjà vu.").encode("latin-1")
    caps = GOOD + [
        Capture("https://latin.example/", latin, content_type="text/html; charset=utf-8"),
        Capture("https://bogus.example/", article(3).encode(), content_type="text/html; charset=x"),
    ]
    path = tmp_path / "w.warc.gz"
    build_warc(path, caps)
    counts, urls = run(tmp_path, path)
    assert urls[:4] == GOOD_URLS
    assert counts["decoded_detected"] == 1  # latin-1 under a utf-8 label: detected, counted
    assert "https://bogus.example/" in urls  # an unknown label falls back to utf-8


def test_huge_page_is_skipped_and_counted(tmp_path: Path) -> None:
    huge = article(0).encode() * 6000  # ~11.7 MB, over the 10 MB max_html_bytes
    path = tmp_path / "h.warc.gz"
    build_warc(path, GOOD[:2] + [Capture("https://huge.example/", huge)] + GOOD[2:])
    counts, urls = run(tmp_path, path)
    assert counts["skipped_too_large"] == 1
    assert urls == GOOD_URLS


def test_deeply_nested_page_does_not_take_the_run_down(tmp_path: Path) -> None:
    nested = "<html><body>" + "<div>" * 5000 + "deep text " * 50 + "</div>" * 5000
    path = tmp_path / "n.warc.gz"
    build_warc(path, GOOD[:2] + [Capture("https://deep.example/", nested.encode())] + GOOD[2:])
    counts, urls = run(tmp_path, path)
    assert urls == GOOD_URLS
    accounted = counts["kept"] + sum(
        v for k, v in counts.items() if k.startswith(("dropped_", "skipped_"))
    )
    assert accounted == counts["total"] == 5  # the deep page is counted under some reason


def test_binary_payload_labelled_html_is_dropped_as_undecodable(tmp_path: Path) -> None:
    blob = png_bytes() * 20
    path = tmp_path / "b.warc.gz"
    build_warc(path, GOOD[:2] + [Capture("https://img.example/x", blob)] + GOOD[2:])
    counts, urls = run(tmp_path, path)
    assert counts["dropped_undecodable"] == 1
    assert urls == GOOD_URLS


def _bad_length_record(url: str, length: bytes) -> bytes:
    """A response record whose WARC Content-Length is `length`, as a broken writer makes it."""
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + article(1).encode()
    head = (
        b"WARC/1.0\r\nWARC-Type: response\r\n"
        + f"WARC-Record-ID: <urn:uuid:{record_id(url)}>\r\nWARC-Target-URI: {url}\r\n".encode()
        + b"Content-Type: application/http; msgtype=response\r\nContent-Length: "
        + length
        + b"\r\n\r\n"
    )
    return head + http + b"\r\n\r\n"


@pytest.mark.parametrize("length", [b"abc", b"-5", b"12x"])
def test_bad_record_in_a_whole_file_gzip_costs_only_itself(tmp_path: Path, length: bytes) -> None:
    """`gzip file.warc` is one member: a bad record in it must not take the records after it."""
    bad = _bad_length_record("https://bad.example/", length)
    units = [warcinfo_record("s.warc.gz"), *(response_record(c) for c in GOOD[:2]), bad]
    units += [response_record(c) for c in GOOD[2:]]
    single, members = tmp_path / "s.warc.gz", tmp_path / "m.warc.gz"
    single.write_bytes(gzip.compress(b"".join(units), mtime=0))
    members.write_bytes(b"".join(gzip.compress(u, mtime=0) for u in units))
    for path in (single, members):
        counts: Counter[str] = Counter()
        urls = [r.target_uri for r in iter_records(path, counts=counts)]
        assert urls == [None, *GOOD_URLS], path.name  # the warcinfo record, then the pages
        assert counts == {"corrupt_record": 1}  # counted once, not also as a page without HTTP
    counts, urls = run(tmp_path, single)
    assert urls == GOOD_URLS


def test_missing_or_repeated_record_ids_cost_only_their_records(tmp_path: Path) -> None:
    """Ids name documents down to dedup, which refuses repeats: two records without a
    WARC-Record-ID (or one reusing an id) must not fail the whole corpus."""
    extra = [Capture(f"https://noid{i}.example/", article(i).encode()) for i in range(2)]
    extra.append(Capture("https://copy.example/", article(3).encode()))
    units = [warcinfo_record("ids.warc.gz"), *(response_record(c) for c in GOOD + extra)]
    for i in (-3, -2):  # drop the id header of the two noid records
        units[i] = re.sub(rb"WARC-Record-ID: [^\r]*\r\n", b"", units[i])
    units[-1] = units[-1].replace(record_id(extra[2].url).encode(), record_id(GOOD[0].url).encode())
    path = tmp_path / "ids.warc.gz"
    path.write_bytes(b"".join(gzip.compress(u, mtime=0) for u in units))

    counts = filter_warc(
        path, tmp_path / "records.parquet", UrlFilterConfig(blocklist=_empty(tmp_path))
    )
    assert counts["dropped_no_record_id"] == 2 and counts["dropped_duplicate_record_id"] == 1
    _, urls = run(tmp_path, path)
    assert urls == GOOD_URLS
    sigs = tmp_path / "sigs.parquet"
    signatures_to_parquet(tmp_path / "kept.parquet", sigs, MinHashConfig())
    stats = dedup_corpus([("ids.warc.gz", tmp_path / "kept.parquet", sigs)], tmp_path / "c.duckdb")
    assert stats["kept"] == 4


def test_a_repeated_id_in_a_whole_file_gzip_is_not_extracted_twice(tmp_path: Path) -> None:
    """In one gzip member every record has the same offset: the record reusing an earlier
    id (dropped by url_filter) must not take that id's kept row (it did: five documents of
    four pages, two under one id, and skipped_missing -1)."""
    copy = Capture("https://copy.example/", article(3).encode())
    units = [warcinfo_record("one.warc.gz"), *(response_record(c) for c in GOOD + [copy])]
    units[-1] = units[-1].replace(record_id(copy.url).encode(), record_id(GOOD[0].url).encode())
    path = tmp_path / "one.warc.gz"
    path.write_bytes(gzip.compress(b"".join(units), mtime=0))

    counts, urls = run(tmp_path, path)

    assert (counts["total"], counts["kept"], counts["skipped_missing"]) == (4, 4, 0)
    assert urls == GOOD_URLS


def _empty(tmp_path: Path) -> Path:
    blocklist = tmp_path / "domains"
    blocklist.write_text("")
    return blocklist


def test_a_corpus_of_one_document_is_refused_at_shard(tmp_path: Path) -> None:
    """Every page but one filtered out or a duplicate: shard says so, rather than writing
    a train split only, for training to run and evaluation to fail on an empty val split."""
    corpus = corpus_manifest(tmp_path, [("only", article(0), True), ("dup", article(0), False)])
    db = corpus.path(tmp_path, CORPUS_DB)
    tok = tmp_path / "tokenizer.json"
    train_bpe([article(0)], 300).save(str(tok))
    with pytest.raises(ValueError, match=r"1 kept document\(s\).*at least 2"):
        shard_corpus(db, tok, lambda name: tmp_path / name, ShardConfig())


def test_idn_hosts_meet_the_blocklist_in_either_spelling(tmp_path: Path) -> None:
    """A crawler may record an IDN host as Unicode or as punycode; UT1 lists may hold
    either: a blocked site must be blocked whichever way each side spells it."""
    lists = tmp_path / "domains"
    lists.write_text("xn--bcher-kva.example\nплохой.рф\n")
    caps = GOOD + [
        Capture("https://bücher.example/a", article(0).encode()),
        Capture("https://shop.BÜCHER.example./b", article(1).encode()),
        Capture("https://xn--i1adjac2b.xn--p1ai/c", article(2).encode()),
    ]
    path = tmp_path / "idn.warc.gz"
    build_warc(path, caps)
    out = tmp_path / "records.parquet"
    counts = filter_warc(path, out, UrlFilterConfig(blocklist=lists))
    assert counts["dropped_blocklist_domain"] == 3 and counts["kept"] == 4
    rows = pq.read_table(out).to_pylist()
    assert rows[5]["host"] == "shop.bücher.example"  # the column keeps the URL's spelling


def test_the_same_warc_under_two_names_is_named_by_dedup(tmp_path: Path) -> None:
    path = tmp_path / "a.warc.gz"
    build_warc(path, GOOD)
    run(tmp_path, path)
    sigs = tmp_path / "sigs.parquet"
    signatures_to_parquet(tmp_path / "kept.parquet", sigs, MinHashConfig())
    kept = tmp_path / "kept.parquet"
    kept2, sigs2 = tmp_path / "kept2.parquet", tmp_path / "sigs2.parquet"
    kept2.write_bytes(kept.read_bytes())
    sigs2.write_bytes(sigs.read_bytes())
    files = [("a.warc.gz", kept, sigs), ("copy-of-a.warc.gz", kept2, sigs2)]
    with pytest.raises(CorpusMismatch, match=r"listed twice.*/ 2 / a\.warc\.gz, copy-of-a"):
        dedup_corpus(files, tmp_path / "c.duckdb")


def test_an_empty_corpus_names_the_cause_at_the_tokenizer(tmp_path: Path) -> None:
    corpus = corpus_manifest(tmp_path, [("a", article(0), False), ("b", article(1), False)])
    with pytest.raises(ValueError, match=r"no kept documents.* of 2 documents .*dedup kept 0"):
        train_tokenizer.fn(str(tmp_path), corpus, TokenizerConfig())


@pytest.mark.parametrize("compress", [True, False])
def test_damaged_first_bytes_cost_the_first_record_not_the_file(
    tmp_path: Path, compress: bool
) -> None:
    path = tmp_path / ("d.warc.gz" if compress else "d.warc")
    build_warc(path, GOOD, compress=compress)
    data = bytearray(path.read_bytes())
    data[:3] = b"\x00\x00\x00"  # the warcinfo record's gzip magic / "WAR"
    path.write_bytes(bytes(data))
    report = check_integrity(path)  # what the download stage checks before trusting a file
    assert report.corrupt_members == 1 and not report.truncated
    counts, urls = run(tmp_path, path)
    assert urls == GOOD_URLS


def test_an_infinite_page_timeout_means_none(tmp_path: Path) -> None:
    """extract.timeout_s=inf passes the config (it is > 0): it must not crash every WARC."""
    path = tmp_path / "i.warc.gz"
    build_warc(path, GOOD[:2])
    counts, urls = run(tmp_path, path, ExtractConfig(timeout_s=float("inf"), workers=1))
    assert counts["kept"] == 2 and urls == GOOD_URLS[:2]


def test_an_infinite_download_timeout_means_none(tmp_path: Path) -> None:
    """download.timeout_s=inf passes the config: the socket waits, it does not overflow."""
    build_warc(tmp_path / "a.warc.gz", GOOD[:1])
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/a.warc.gz"
        cfg = DownloadConfig(timeout_s=float("inf"), retries=0)
        report = fetch(url, tmp_path / "out.warc.gz", cfg)
    finally:
        srv.shutdown()
    assert report.members == 3 and not report.corrupt_members
