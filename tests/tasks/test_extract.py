"""Stage "extract": decoding, trafilatura and the drop/skip funnel, on WARCs built for the test."""

from __future__ import annotations

import codecs
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import fineflow.tasks.extract as extract_mod
import fineflow.tasks.url_filter as url_filter_mod
from fineflow.config import SAMPLE_DIR, DownloadConfig, ExtractConfig, UrlFilterConfig
from fineflow.storage.artifacts import verify
from fineflow.tasks.download import describe_sources, download_warc
from fineflow.tasks.extract import (
    decode_html,
    extract_docs,
    extract_main_text,
    extract_text,
    flatten_nesting,
    sniff_meta_charset,
)
from fineflow.tasks.url_filter import filter_urls, filter_warc
from fineflow.tasks.warc import iter_records
from tests.helpers import sandbox_extractors
from tests.helpers.warc_factory import (
    ARTICLES,
    FOREIGN_ARTICLES,
    Capture,
    article,
    bloated_article,
    build_warc,
    deep_article,
    foreign_article,
    png_bytes,
    record_id,
)

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
    # latin-1 bytes claimed utf-8 and nothing else to go on: the charset is detected
    Capture("https://d.example/detected", _latin1(1, None)),
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
    assert decode_html(long_latin, "no-such-charset") == (long_latin.decode("cp1252"), "detected")
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
        "decoded_lossy": 0,
        "decoded_detected": 1,
        "flattened_nesting": 0,
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
    assert "Café, déjà vu, naïve façade." in docs["https://d.example/detected"]["text"]


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


def test_records_are_read_a_batch_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """records.parquet is read as the pages go, not whole: when a page is extracted, at
    most a batch of rows has been read beyond it (and the row after its member's, which
    tells where the member ends), however many pages the WARC holds."""
    monkeypatch.setattr(url_filter_mod, "_BATCH_ROWS", 5)  # row groups of 5 rows
    monkeypatch.setattr(extract_mod, "_ROWS_BATCH", 5)
    path = tmp_path / "many.warc.gz"
    pages = [Capture(f"https://p{i}.example/", article(i % 4).encode()) for i in range(30)]
    build_warc(path, pages)
    blocklist = tmp_path / "domains"
    blocklist.write_text("")
    records = tmp_path / "records.parquet"
    filter_warc(path, records, UrlFilterConfig(blocklist=blocklist))
    read = 0
    iter_batches = extract_mod.parquet.iter_batches

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - iter_batches' own
        nonlocal read
        for batch in iter_batches(*args, **kwargs):
            read += batch.num_rows
            yield batch

    monkeypatch.setattr(extract_mod.parquet, "iter_batches", counted)
    ahead: list[int] = []

    def extractor(html: str, *_: bool) -> str:  # in this process (workers=0)
        ahead.append(read - len(ahead))
        return html

    cfg = ExtractConfig(workers=0)
    counts, _ = extract_docs(path, records, tmp_path / "docs.parquet", cfg, extractor=extractor)

    assert counts["kept"] == 30
    assert max(ahead) == 5 + 1  # the whole file read first: 30


def test_in_process_mode_gives_the_same_documents(tmp_path: Path, warc: tuple[Path, Path]) -> None:
    path, records = warc
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert extract_docs(path, records, a, CFG) == extract_docs(
        path, records, b, CFG.model_copy(update={"workers": 0})
    )
    assert pq.read_table(a).equals(pq.read_table(b))


def test_any_number_of_sandboxes_writes_the_same_bytes(
    tmp_path: Path, warc: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extract_mod, "ROW_GROUP", 2)
    path, records = warc
    results = {}
    for workers in (1, 3, None):
        out = tmp_path / f"{workers}.parquet"
        cfg = CFG.model_copy(update={"workers": workers})
        results[workers] = extract_docs(path, records, out, cfg), out.read_bytes()
    assert results[1][0][0]["kept"] == 6
    assert results[1] == results[3] == results[None]


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
        pytest.skip("no bundled sample in fineflow/sample/warcs")
    records = tmp_path / "records.parquet"
    filter_warc(warcs[0], records, UrlFilterConfig())
    table = pq.read_table(records)
    few = tmp_path / "few.parquet"
    pq.write_table(table.filter(table["keep"]).slice(0, 12), few)  # trafilatura is ~50 ms/page

    counts, _ = extract_docs(warcs[0], few, tmp_path / "docs.parquet", ExtractConfig())

    assert counts["total"] == 12 and counts["kept"] >= 10
    docs = pq.read_table(tmp_path / "docs.parquet").to_pylist()
    assert all(len(d["text"]) >= 200 and d["warc"] == warcs[0].name for d in docs)


def _filtered(tmp_path: Path, caps: list[Capture], blocked: str = "") -> tuple[Path, Path]:
    path = tmp_path / "c.warc.gz"
    build_warc(path, caps)
    blocklist = tmp_path / "domains"
    blocklist.write_text(blocked)
    records = tmp_path / "records.parquet"
    filter_warc(path, records, UrlFilterConfig(blocklist=blocklist))
    return path, records


def test_an_upper_case_scheme_reads_like_its_lower_case_twin(tmp_path: Path) -> None:
    # warcio parses HTTP headers only under a URI starting "http:"/"https:" in lower case
    body = article(0).encode()
    caps = [
        Capture("HTTPS://WWW.EXAMPLE.COM/page", body),
        Capture("https://www.example.com/page", body),
        Capture("Http://Shop.Example.ORG/Cart", body, chunked=True),
        Capture("http://shop.example.org/Cart", body, chunked=True),
    ]
    path, records = _filtered(tmp_path, caps)

    responses = [r for r in iter_records(path, payload=True) if r.warc_type == "response"]
    for upper, lower in zip(responses[::2], responses[1::2], strict=True):
        assert (upper.status, upper.content_type, upper.charset) == (200, "text/html", "utf-8")
        assert upper.payload == lower.payload == body  # headers gone, chunking undone
        assert upper.target_uri != lower.target_uri  # the URI is kept as written
    rows = pq.read_table(records).to_pylist()
    assert [(r["host"], r["keep"]) for r in rows] == [
        ("example.com", True),
        ("example.com", True),
        ("shop.example.org", True),
        ("shop.example.org", True),
    ]
    counts, _ = extract_docs(path, records, tmp_path / "docs.parquet", CFG)
    assert counts["kept"] == 4
    texts = [d["text"] for d in pq.read_table(tmp_path / "docs.parquet").to_pylist()]
    assert texts[0] == texts[1] == texts[2] == texts[3]

    # the url filter compares hosts case-insensitively: a blocked domain blocks both spellings
    _, blocked = _filtered(tmp_path, caps, "example.com\n")
    reasons = [r["reason"] for r in pq.read_table(blocked).to_pylist()]
    assert reasons == ["blocklist_domain", "blocklist_domain", None, None]


FRENCH = "« Le café, déjà servi, refroidissait », disait-elle… “Naïve façade”, œuvre d’art."


def test_mislabelled_charsets_are_detected(tmp_path: Path) -> None:
    cp1252 = article(0, meta_charset="utf-8", extra=" " + FRENCH).encode("cp1252")
    sjis = foreign_article("ja", meta_charset="iso-8859-1").encode("shift_jis")
    cp1251 = foreign_article("ru").encode("cp1251")
    # UTF-8 with one stray byte under a stale latin-1 header: still UTF-8, lossily
    stray = article(1, extra=" " + FRENCH).encode().replace(b"</h1>", b"\xe9</h1>")
    latin1 = "text/html; charset=iso-8859-1"
    caps = [
        Capture("https://fr.example/cp1252-as-utf8", cp1252),
        Capture("https://ja.example/sjis-as-latin1", sjis, content_type=latin1),
        Capture("https://ru.example/cp1251-as-latin1", cp1251, content_type=latin1),
        Capture("https://fr.example/stray-byte", stray, content_type=latin1),
    ]
    assert decode_html(sjis, "iso-8859-1")[1] == "detected"
    assert decode_html(cp1251, "iso-8859-1")[1] == "detected"
    assert decode_html(stray, "iso-8859-1")[1] == "lossy"
    path, records = _filtered(tmp_path, caps)

    counts, _ = extract_docs(path, records, tmp_path / "docs.parquet", CFG)

    assert (counts["kept"], counts["decoded_detected"], counts["decoded_lossy"]) == (4, 3, 1)
    docs = {d["url"]: d["text"] for d in pq.read_table(tmp_path / "docs.parquet").to_pylist()}
    assert FRENCH in docs[caps[0].url] and "\ufffd" not in docs[caps[0].url]
    for url, lang in ((caps[1].url, "ja"), (caps[2].url, "ru")):
        title, paragraphs = FOREIGN_ARTICLES[lang]
        assert docs[url].startswith(title) and paragraphs[1] in docs[url]
    assert FRENCH in docs[caps[3].url] and docs[caps[3].url].count("\ufffd") == 1


def test_a_declared_charset_that_reads_plausibly_is_kept() -> None:
    ru = foreign_article("ru", meta_charset="windows-1251")
    assert decode_html(ru.encode("cp1251"), None) == (ru, "meta")
    ja = foreign_article("ja")
    assert decode_html(ja.encode("shift_jis"), "shift_jis") == (ja, "header")
    # too few non-ASCII characters to doubt the label
    assert decode_html(b"<p>\x93hi\x94</p>", "iso-8859-1") == ("<p>\u201chi\u201d</p>", "header")


def test_text_after_a_very_deep_nest_is_kept(tmp_path: Path) -> None:
    # libxml2 stops parsing at 256 open elements: everything after the nest was lost
    caps = [
        Capture("https://deep.example/nest", deep_article(0, 100_000).encode()),
        Capture(
            "https://deep.example/unclosed",
            deep_article(1, 0)
            .replace("<main>", "<span>" * 5000 + "<b>" * 5000 + "<main>", 1)
            .encode(),
        ),
        Capture("https://shallow.example/nest", deep_article(2, 200).encode()),
    ]
    path, records = _filtered(tmp_path, caps)
    cfg = CFG.model_copy(update={"max_html_bytes": 2_000_000})

    counts, _ = extract_docs(path, records, tmp_path / "docs.parquet", cfg)

    assert (counts["kept"], counts["flattened_nesting"]) == (3, 2)  # 200 deep parses whole
    docs = pq.read_table(tmp_path / "docs.parquet").to_pylist()
    for doc, i in zip(docs, (0, 1, 2), strict=True):
        title, paragraphs = ARTICLES[i]
        assert title in doc["text"] and paragraphs[-1] in doc["text"]


def test_flatten_nesting_keeps_text_and_shallow_markup() -> None:
    html = "<div><div><!-- <div> --><p>a<p>b<br><img src='x'/><div>c</div></div></div>"
    flat = "<div><div><!-- <div> --> a b<br><img src='x'/> c </div></div>"
    assert flatten_nesting(html, 2) == flat
    script = "<div><script>var s = '<div><div><div>';</script><div>x</div></div>"
    assert flatten_nesting(script, 2) == script  # script text is not markup
    assert extract_main_text(article(0), True, False).flattened is False


def test_a_page_over_the_old_2mb_cap_is_extracted_in_the_sandbox(tmp_path: Path) -> None:
    big = bloated_article(3, 2_700_000).encode()  # real news pages reach 2.5-2.9 MB
    caps = [Capture("https://news.example/long", big), Capture("https://a.example/", b"x")]
    assert 2_000_000 < len(big) < ExtractConfig().max_html_bytes
    path, records = _filtered(tmp_path, caps)

    # the default config: a sandbox worker under the default address-space cap
    counts, _ = extract_docs(path, records, tmp_path / "docs.parquet", ExtractConfig())

    assert (counts["kept"], counts["skipped_too_large"], counts["skipped_crash"]) == (1, 0, 0)
    (doc,) = pq.read_table(tmp_path / "docs.parquet").to_pylist()
    assert doc["text"].startswith(ARTICLES[3][0])
