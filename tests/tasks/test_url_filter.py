"""Stage "url_filter": blocklist, banned words, status and content type, from headers only."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fineflow.config import SAMPLE_DIR, UrlFilterConfig
from fineflow.storage.artifacts import ArtifactWriter, verify
from fineflow.tasks.download import describe_sources, download_warc
from fineflow.tasks.url_filter import (
    UrlFilter,
    fetch_blocklist,
    filter_urls,
    filter_warc,
    host_of,
    load_blocklist,
    normalize_host,
    normalize_url,
    parent_domains,
    read_blocklist,
    url_reason,
    url_tokens,
)
from tests.helpers.warc_factory import Capture, article, build_warc, record_id

BLOCKLIST = """\
# UT1-style list
# adult

Bad-Site.example
www.casino-royal.example   # inline comment
tracker.example:8080
"""


@pytest.fixture
def cfg(tmp_path: Path) -> UrlFilterConfig:
    path = tmp_path / "domains"
    path.write_text(BLOCKLIST)
    return UrlFilterConfig(
        blocklist=path,
        banned_words=["sex", "casino", "Viagra"],
        soft_banned_words=[],
        banned_subwords=[],
    )


def test_blocklist_parsing_and_host_normalisation(cfg: UrlFilterConfig) -> None:
    bl = load_blocklist(cfg.blocklist)
    assert len(bl) == 3
    assert all(d in bl for d in ("bad-site.example", "casino-royal.example", "tracker.example"))
    assert "www.bad-site.example" not in bl and "" not in bl
    assert normalize_host("WWW.Example.COM:443") == "example.com"
    assert normalize_host("www2.example.com.") == "www2.example.com"
    assert host_of("https://user:pw@WWW.Shop.Example:8443/a?b=c") == "shop.example"
    assert host_of("http://[2001:db8::1]:80/x") == "[2001:db8::1]"
    assert host_of("http://[bad/x") == ""
    assert list(parent_domains("a.b.example.com")) == [
        "a.b.example.com",
        "b.example.com",
        "example.com",
        "com",
    ]
    assert url_tokens("https://essex.example/Sex-Shop?x=1") == {
        "https",
        "essex",
        "example",
        "sex",
        "shop",
        "x",
        "1",
    }


def test_the_list_is_compiled_once_under_the_root_and_shared(
    tmp_path: Path, cfg: UrlFilterConfig
) -> None:
    root = tmp_path / "data"
    mapped = load_blocklist(cfg.blocklist, root=root)
    files = list(root.glob("_compiled/blocklist/*/domains.u64"))
    assert len(files) == 1 and files[0].stat().st_size == 3 * 8  # 3 domains, 8 bytes each
    here = load_blocklist(cfg.blocklist)
    hosts = ["bad-site.example", "tracker.example", "www.bad-site.example", "good.example", ""]
    assert [h in mapped for h in hosts] == [h in here for h in hosts] == [1, 1, 0, 0, 0]
    built = files[0].stat().st_mtime_ns
    # another process maps the same file (the hashes are not salted per process)
    code = (
        "import sys; from pathlib import Path; from fineflow.tasks.url_filter import "
        "load_blocklist as L; b = L(Path(sys.argv[1]), root=Path(sys.argv[2])); "
        "print(len(b), 'casino-royal.example' in b, 'good.example' in b)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(cfg.blocklist), str(root)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert out == ["3", "True", "False"]
    assert files[0].stat().st_mtime_ns == built  # mapped, not built again
    cfg.blocklist.write_text(BLOCKLIST + "new.example\n")  # a changed list: compiled anew
    assert "new.example" in load_blocklist(cfg.blocklist, root=root)
    assert len(list(root.glob("_compiled/blocklist/*/domains.u64"))) == 2
    assert not list(root.glob("*/*/manifest.json"))  # not an artifact: nothing to mirror


CASES = [
    # url, status, content type, expected reason
    ("https://good.example/article", 200, "text/html; charset=utf-8", None),
    ("https://bad-site.example/page", 200, "text/html", "blocklist_domain"),
    ("https://deep.sub.bad-site.example/", 200, "text/html", "blocklist_domain"),
    ("https://www.bad-site.example/", 200, "text/html", "blocklist_domain"),
    ("https://casino-royal.example/", 200, "text/html", "blocklist_domain"),
    ("https://tracker.example:8080/", 200, "text/html", "blocklist_domain"),
    ("https://notbad-site.example/", 200, "text/html", None),  # not a parent domain
    ("https://essex.example/history-of-essex", 200, "text/html", None),  # sex only as substring
    ("https://shop.example/sex-toys", 200, "text/html", "banned_word"),
    ("https://shop.example/p?q=VIAGRA", 200, "text/html", "banned_word"),
    ("https://good.example/casinos-of-monaco", 200, "text/html", None),
    ("https://good.example/moved", 301, "text/html", "status_301"),
    ("https://good.example/missing", 404, "text/html", "status_404"),
    ("https://good.example/logo.png", 200, "image/png", "not_html"),
    ("https://good.example/feed", 200, "application/xhtml+xml", None),
    ("https://good.example/raw", 200, None, "not_html"),
]


def _build(tmp_path: Path) -> Path:
    caps = [Capture(url, article(i).encode(), st, ct) for i, (url, st, ct, _) in enumerate(CASES)]
    path = tmp_path / "w.warc.gz"
    build_warc(path, caps)
    return path


def test_filter_warc_rows_and_counts(tmp_path: Path, cfg: UrlFilterConfig) -> None:
    out = tmp_path / "records.parquet"
    counts = filter_warc(_build(tmp_path), out, cfg)

    rows = pq.read_table(out).to_pylist()
    assert [(r["url"], r["reason"]) for r in rows] == [(c[0], c[3]) for c in CASES]
    assert all(r["keep"] == (r["reason"] is None) for r in rows)
    assert rows[3]["host"] == "bad-site.example" and rows[1]["status"] == 200
    assert rows[0]["id"] == record_id(CASES[0][0]) and rows[0]["date"] == "2024-03-01T00:00:00Z"
    assert rows[0]["content_type"] == "text/html" and rows[-1]["content_type"] is None
    assert pq.read_schema(out).field("offset").type == "int64"
    assert counts == {
        "total": 16,
        "kept": 5,
        "dropped_blocklist_domain": 5,
        "dropped_banned_word": 2,
        "dropped_status_301": 1,
        "dropped_status_404": 1,
        "dropped_not_html": 2,
        "dropped_blocklist_url": 0,
        "dropped_soft_banned_words": 0,
        "dropped_banned_subword": 0,
        "skipped_corrupt_member": 0,
        "skipped_truncated_tail": 0,
        "skipped_corrupt_record": 0,
    }


def test_damaged_warc_counts_reader_skips(tmp_path: Path, cfg: UrlFilterConfig) -> None:
    caps = [Capture(f"https://ok{i}.example/", article(i).encode()) for i in range(4)]
    path = tmp_path / "d.warc.gz"
    build_warc(path, caps, corrupt_crc=(1,), truncate=20)
    counts = filter_warc(path, tmp_path / "r.parquet", cfg)
    assert counts["total"] == counts["kept"] == 2
    assert (counts["skipped_corrupt_member"], counts["skipped_truncated_tail"]) == (1, 1)


def test_task_on_downloaded_warc(tmp_path: Path, cfg: UrlFilterConfig) -> None:
    root = tmp_path / "data"
    dl = download_warc.fn(str(root), describe_sources([str(_build(tmp_path))])[0], _fast())
    m = filter_urls.fn(str(root), dl, cfg)
    assert m.stage == "url_filter" and m.warc == "w.warc.gz"
    assert [f.path for f in m.files] == ["records.parquet"]
    assert m.counts["kept"] == 5 and verify(root, m) is None
    again = filter_urls.fn(str(root), dl, cfg)
    assert again == m  # deterministic: same inputs, same manifest

    # an empty WARC (no responses) still makes a valid, empty records.parquet
    empty = tmp_path / "empty.warc.gz"
    build_warc(empty, [])
    with ArtifactWriter(tmp_path / "x", "url_filter", "k") as out:
        counts = filter_warc(empty, out.path("records.parquet"), cfg)
        assert pq.read_table(out.path("records.parquet")).num_rows == 0
    assert counts["total"] == 0


def test_bundled_sample_matches_its_manifest(tmp_path: Path) -> None:
    warcs = sorted((SAMPLE_DIR / "warcs").glob("*.warc.gz"))
    manifest = SAMPLE_DIR / "manifest.tsv"
    if not warcs or not manifest.is_file():
        pytest.skip("no bundled sample")
    expected = {"blocked": {"blocklist_domain"}, "non-html": {"not_html"}}
    lines = [ln.split("\t") for ln in manifest.read_text().splitlines()[1:]]
    for warc in warcs:
        counts = filter_warc(warc, tmp_path / "r.parquet", UrlFilterConfig())
        got = {(r["url"], r["reason"]) for r in pq.read_table(tmp_path / "r.parquet").to_pylist()}
        want = [ln for ln in lines if ln[0] == warc.name]
        assert counts["total"] == len(want) == len(got)
        for _, kind, status, _, url, *_ in want:
            reasons = {reason for u, reason in got if u == url}
            if kind == "non-200":
                assert reasons == {f"status_{status}"}, url
            else:
                assert reasons == expected.get(kind, {None}), (kind, url)


def _fast():
    from fineflow.config import DownloadConfig

    return DownloadConfig(retries=0, backoff_s=0.01)


def _ut1_tree(base: Path) -> Path:
    """A UT1-shaped tree: blacklists/<category>/{domains,urls}."""
    for cat, domains, urls in (
        ("adult", "adult-site.example\nwww.nsfw.example\n", "good.example/private/gallery\n"),
        ("gambling", "bets.example\n", "good.example/bets\n"),
    ):
        d = base / "blacklists" / cat
        d.mkdir(parents=True)
        (d / "domains").write_text(domains)
        (d / "urls").write_text(urls)
    return base / "blacklists"


def test_ut1_directory_and_archive_read_the_chosen_categories(tmp_path: Path) -> None:
    tree = _ut1_tree(tmp_path / "src")
    archive = tmp_path / "blacklists.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="blacklists")
    for source in (tree, archive):
        adult = read_blocklist(source, ["adult"])
        assert len(adult) == 2 and "adult-site.example" in adult and "nsfw.example" in adult
        assert len(adult.urls) == 1 and "good.example/private/gallery" in adult.urls
        both = read_blocklist(source, ["adult", "gambling"])
        assert len(both) == 3 and "bets.example" in both
        assert "good.example/bets" in both.urls
    assert normalize_url("HTTPS://WWW.Good.Example/private/gallery/") == (
        "good.example/private/gallery"
    )


FINEWEB_CASES = [
    ("https://adult-site.example/", "blocklist_domain"),  # registered domain
    ("https://a.b.nsfw.example/x", "blocklist_domain"),  # full host's parent
    ("http://www.good.example/private/gallery/", "blocklist_url"),  # UT1 urls: no scheme
    ("https://good.example/private/gallery/more", None),  # exact URL only
    ("https://good.example/Hot-Stuff", "banned_word"),  # token, any case
    ("https://good.example/hotel", None),  # not a token
    ("https://good.example/nude/beach", None),  # one soft word
    ("https://good.example/nude-beach/naked", "soft_banned_words"),  # two soft words
    ("https://good.example/p?id=redTube1", "banned_subword"),  # substring after normalising
    ("https://good.example/red-tube", "banned_subword"),  # punctuation removed first
    ("https://good.example/red/tubes-and-pipes", "banned_subword"),
    ("https://good.example/blue-tube", None),
]


def test_fineweb_rules(tmp_path: Path) -> None:
    tree = _ut1_tree(tmp_path / "src")
    words = tmp_path / "soft.txt"
    words.write_text("# soft words\nnude\nNaked\n")
    cfg = UrlFilterConfig(
        blocklist=tree,
        banned_words=["hot"],
        soft_banned_words=[],
        soft_banned_words_file=words,
        banned_subwords=["redtube"],
    )
    flt = UrlFilter.from_config(cfg)
    got = [(url, url_reason(url, host_of(url), flt)) for url, _ in FINEWEB_CASES]
    assert got == FINEWEB_CASES


def test_blocklist_url_is_fetched_once_into_the_store(tmp_path: Path) -> None:
    tree = _ut1_tree(tmp_path / "src")
    archive = tmp_path / "srv" / "blacklists.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="blacklists")
    handler = partial(SimpleHTTPRequestHandler, directory=str(archive.parent))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{srv.server_address[1]}/blacklists.tar.gz"
        cfg = UrlFilterConfig(blocklist=url)
        assert cfg.blocklist == url
        root = tmp_path / "data"
        local = fetch_blocklist(root, url)
        assert local.read_bytes() == archive.read_bytes()
        assert local.is_relative_to(root / "blocklist")
        flt = UrlFilter.from_config(cfg, root)
        srv.shutdown()
    # the server is gone: the cached copy is used
    assert fetch_blocklist(root, url) == local
    assert "nsfw.example" in flt.blocklist
    with pytest.raises(ValueError, match="data root"):
        UrlFilter.from_config(cfg)
