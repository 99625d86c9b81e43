"""Stage "extract": decoding, trafilatura and the drop/skip funnel, on WARCs built for the test."""

from __future__ import annotations

import codecs
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sandbox_extractors
from warc_factory import ARTICLES, Capture, article, build_warc, png_bytes, record_id

import tasks.extract as extract_mod
from fineflow.config import SAMPLE_DIR, DownloadConfig, ExtractConfig, UrlFilterConfig
from storage.artifacts import verify
from tasks.download import describe_sources, download_warc
from tasks.extract import decode_html, extract_docs, extract_text, sniff_meta_charset
from tasks.url_filter import filter_urls, filter_warc

ACCENTS = " Café, déjà vu, naïve façade."
CFG = ExtractConfig(max_html_bytes=20_000)


def _latin1(i: int, meta: str | None) -> bytes:
    return article(i, meta_charset=meta, extra=ACCENTS).encode("latin-1")


CAPTURES = [
    Capture("https://bakery.example/starter", article(0).encode()),
    Capture("https://shore.example/pools", article(1).encode()),
    # latin-1 bytes under a wrong utf-8 header, with a correct meta charset
    Capture("https://a.example/wrong-header", _latin1(2, "iso-8859-1")),
    # latin-1 bytes, no charset in the header, meta charset only
    Capture("https://b.example/meta-only", _latin1(3, "ISO-8859-1"), content_type="text/html"),
    # utf-8 bytes under a stale latin-1 header
    Capture(
        "https://c.example/stale-header",
        article(0, extra=ACCENTS).encode(),
        content_type="text/html; charset=iso-8859-1",
    ),
    # latin-1 bytes claimed utf-8 and nothing else to go on: decoded lossily, kept
    Capture("https://d.example/lossy", _latin1(1, None)),
    Capture("https://img.example/logo", png_bytes(), content_type="text/html"),  # binary
    Capture("https://big.example/huge", article(2).encode() * 20),  # > max_html_bytes
    Capture("https://tiny.example/short", b"<html><body><p>Too short.</p></body></html>"),
    Capture("https://void.example/empty", b"<html><head><script>x()</script></head></html>"),
    Capture("https://x.example/gone", article(3).encode(), status=404),  # url_filter drops
]


@pytest.fixture
def warc(tmp_path: Path) -> tuple[Path, Path]:
    path = tmp_path / "e.warc.gz"
    build_warc(path, CAPTURES)
    blocklist = tmp_path / "domains"
    blocklist.write_text("")
    records = tmp_path / "records.parquet"
    filter_warc(path, records, UrlFilterConfig(blocklist=blocklist))
    return path, records


def test_decode_html_fallbacks() -> None:
    latin = "<p>Café</p>".encode("latin-1")
    assert decode_html("<p>Café</p>".encode(), None) == ("<p>Café</p>", "utf-8")
    assert decode_html(latin, "windows-1252") == ("<p>Café</p>", "header")
    assert decode_html(b'<meta charset="latin1">' + latin, "utf-8")[1] == "meta"
    long_latin = "<p>Café is a short word in a much longer sentence.</p>".encode("latin-1")
    assert decode_html(long_latin, "no-such-charset")[0].startswith("<p>Caf\ufffd is")
    assert decode_html(codecs.BOM_UTF16_LE + "<p>hé</p>".encode("utf-16-le"), None) == (
        "<p>hé</p>",
        "bom",
    )
    assert decode_html(png_bytes(), "utf-8") == (None, "binary")
    assert decode_html(bytes(range(128, 256)) * 20, None) == (None, "garbage")
    # "iso-8859-1" means windows-1252 on the web (curly quotes live in 0x80-0x9f)
    assert decode_html(b"\x93hi\x94", "iso-8859-1")[0] == "\u201chi\u201d"
    assert (
        sniff_meta_charset(
            b'<meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS">'
        )
        == "shift_jis"
    )
    assert sniff_meta_charset(b'<meta charset="utf-16">') is None


def test_extract_docs_funnel(tmp_path: Path, warc: tuple[Path, Path]) -> None:
    path, records = warc
    assert len(CAPTURES[7].body) > CFG.max_html_bytes
    out = tmp_path / "docs.parquet"

    counts, chars = extract_docs(path, records, out, CFG)

    assert counts == {
        "total": 10,
        "kept": 6,
        "dropped_empty": 1,
        "dropped_too_short": 1,
        "dropped_undecodable": 1,
        "skipped_too_large": 1,
        "skipped_error": 0,
        "skipped_timeout": 0,
        "skipped_crash": 0,
        "skipped_missing": 0,
        "decoded_lossy": 1,
    }
    funnel = sum(v for k, v in counts.items() if k.startswith(("kept", "dropped_", "skipped_")))
    assert funnel == counts["total"]

    docs = {d["url"]: d for d in pq.read_table(out).to_pylist()}
    assert list(docs) == [c.url for c in CAPTURES[:6]]
    first = docs[CAPTURES[0].url]
    assert first["id"] == record_id(CAPTURES[0].url)
    assert (first["host"], first["warc"], first["date"]) == (
        "bakery.example",
        "e.warc.gz",
        "2024-03-01T00:00:00Z",
    )
    title, paragraphs = ARTICLES[0]
    assert first["text"].startswith(f"{title}\n{paragraphs[0][:60]}")
    assert "Home | About" not in first["text"] and "All rights reserved" not in first["text"]
    assert all(d["length"] == len(d["text"]) >= CFG.min_chars for d in docs.values())
    assert chars == sum(d["length"] for d in docs.values())
    for url in ("https://a.example/wrong-header", "https://b.example/meta-only"):
        assert "Café, déjà vu, naïve façade." in docs[url]["text"]
    assert "Café, déjà vu" in docs["https://c.example/stale-header"]["text"]
    assert "Caf\ufffd" in docs["https://d.example/lossy"]["text"]


def test_errors_are_counted_and_the_run_goes_on(
    tmp_path: Path, warc: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extract_mod, "ROW_GROUP", 2)
    path, records = warc
    out = tmp_path / "docs.parquet"

    counts, _ = extract_docs(path, records, out, CFG, extractor=sandbox_extractors.flaky)

    assert counts["skipped_error"] == 2  # both pages about rock pools
    assert counts["kept"] == 4
    assert pq.ParquetFile(out).metadata.num_row_groups == 2  # 4 docs in groups of 2


@pytest.mark.parametrize("workers", [1, 2])
def test_a_hanging_or_dying_page_costs_only_itself(tmp_path: Path, workers: int) -> None:
    caps = [
        Capture("https://a.example/1", article(0).encode()),
        Capture("https://hang.example/", article(1, extra=" HANG").encode()),
        Capture("https://b.example/2", article(2).encode()),
        Capture("https://die.example/", article(3, extra=" DIE").encode()),
        Capture("https://c.example/3", article(0, extra=" again").encode()),
    ]
    path = tmp_path / "h.warc.gz"
    build_warc(path, caps)
    blocklist = tmp_path / "domains"
    blocklist.write_text("")
    records = tmp_path / "records.parquet"
    filter_warc(path, records, UrlFilterConfig(blocklist=blocklist))
    cfg = ExtractConfig(workers=workers, timeout_s=2.0)
    out = tmp_path / "docs.parquet"

    counts, _ = extract_docs(path, records, out, cfg, extractor=sandbox_extractors.hangs_or_dies)

    assert (counts["skipped_timeout"], counts["skipped_crash"], counts["kept"]) == (1, 1, 3)
    urls = [d["url"] for d in pq.read_table(out).to_pylist()]
    assert urls == ["https://a.example/1", "https://b.example/2", "https://c.example/3"]


def test_in_process_mode_gives_the_same_documents(tmp_path: Path, warc: tuple[Path, Path]) -> None:
    path, records = warc
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert extract_docs(path, records, a, CFG) == extract_docs(
        path, records, b, CFG.model_copy(update={"workers": 0})
    )
    assert pq.read_table(a).equals(pq.read_table(b))


def test_task_on_upstream_manifests(tmp_path: Path) -> None:
    src = tmp_path / "t.warc.gz"
    build_warc(src, CAPTURES)
    blocklist = tmp_path / "domains"
    blocklist.write_text("shore.example\n")
    root = str(tmp_path / "data")
    dl = download_warc.fn(root, describe_sources([str(src)])[0], DownloadConfig(retries=0))
    filtered = filter_urls.fn(root, dl, UrlFilterConfig(blocklist=blocklist))

    m = extract_text.fn(root, dl, filtered, CFG)

    assert (m.stage, m.warc, [f.path for f in m.files]) == (
        "extract",
        "t.warc.gz",
        ["docs.parquet"],
    )
    assert verify(Path(root), m) is None
    assert (m.counts["total"], m.counts["kept"]) == (9, 5)
    docs = pq.read_table(m.path(Path(root), "docs.parquet")).to_pylist()
    assert "https://shore.example/pools" not in {d["url"] for d in docs}
    assert extract_text.fn(root, dl, filtered, CFG) == m  # deterministic manifest


def test_bundled_sample_pages(tmp_path: Path) -> None:
    warcs = sorted((SAMPLE_DIR / "warcs").glob("*.warc.gz"))
    if not warcs:
        pytest.skip("no bundled sample in sample/warcs")
    records = tmp_path / "records.parquet"
    filter_warc(warcs[0], records, UrlFilterConfig())
    table = pq.read_table(records)
    few = tmp_path / "few.parquet"
    pq.write_table(table.filter(table["keep"]).slice(0, 12), few)  # trafilatura is ~50 ms/page

    counts, _ = extract_docs(warcs[0], few, tmp_path / "docs.parquet", ExtractConfig())

    assert counts["total"] == 12 and counts["kept"] >= 10
    docs = pq.read_table(tmp_path / "docs.parquet").to_pylist()
    assert all(len(d["text"]) >= 200 and d["warc"] == warcs[0].name for d in docs)
