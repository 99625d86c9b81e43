"""Stage "filter" as a task, and the funnel it feeds into corpus.duckdb."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from fineflow.config import (
    DedupConfig,
    DownloadConfig,
    ExtractConfig,
    FilterConfig,
    MinHashConfig,
    UrlFilterConfig,
)
from fineflow.storage.artifacts import verify
from fineflow.tasks.dedup import dedup_docs
from fineflow.tasks.download import describe_sources, download_warc
from fineflow.tasks.extract import extract_text
from fineflow.tasks.filter import filter_docs, funnel_markdown
from fineflow.tasks.minhash import minhash_docs
from fineflow.tasks.url_filter import filter_urls
from tests.helpers.warc_factory import Capture, article, build_warc

FRENCH = (
    "<html><body><article><h1>Le jardin</h1>"
    + "".join(
        f"<p>Le jardin numéro {i} est plein de fleurs et les enfants jouent dehors tout "
        f"l'après-midi, pendant que les oiseaux chantent dans les arbres du parc {i}.</p>"
        for i in range(6)
    )
    + "</article></body></html>"
)
CODE = article(0, extra=" Use d = {'a': 1} for this.")


def test_filter_task_and_funnel_tables(tmp_path: Path) -> None:
    caps = [Capture(f"https://ok{i}.example/", article(i).encode()) for i in range(3)]
    caps += [
        Capture("https://copy.example/", article(0).encode()),  # near-duplicate of ok0
        Capture("https://fr.example/", FRENCH.encode()),
        Capture("https://code.example/", CODE.encode()),
        Capture("https://blocked.example/", article(1).encode()),
        Capture("https://mail.example/", article(2, extra=" Mail bob@corp.com now.").encode()),
    ]
    src = tmp_path / "f.warc.gz"
    build_warc(src, caps)
    blocklist = tmp_path / "domains"
    blocklist.write_text("blocked.example\n")
    root = str(tmp_path / "data")
    dl = download_warc.fn(root, describe_sources([str(src)])[0], DownloadConfig(retries=0))
    urls = filter_urls.fn(root, dl, UrlFilterConfig(blocklist=blocklist))
    ext = extract_text.fn(root, dl, urls, ExtractConfig())

    flt = filter_docs.fn(root, ext, FilterConfig())

    assert verify(Path(root), flt) is None
    c = flt.counts
    assert (c["total"], c["kept"]) == (7, 5), (ext.counts, c)
    assert (c["dropped_language_other"], c["dropped_c4_curly_bracket"]) == (1, 1)
    assert c["replaced_email"] == 4  # once per paragraph
    assert c["total"] == c["kept"] + sum(v for k, v in c.items() if k.startswith("dropped_"))
    docs = pq.read_table(flt.path(Path(root), "docs.parquet")).to_pylist()
    assert all(d["language"] == "en" and d["language_score"] >= 0.65 for d in docs)
    assert all("bob@corp.com" not in d["text"] and d["length"] == len(d["text"]) for d in docs)
    dropped = pq.read_table(flt.path(Path(root), "dropped.parquet")).to_pylist()
    assert {(d["url"], d["reason"]) for d in dropped} == {
        ("https://fr.example/", "language_other"),
        ("https://code.example/", "c4_curly_bracket"),
    }
    assert filter_docs.fn(root, ext, FilterConfig()) == flt  # deterministic

    sig = minhash_docs.fn(root, flt, MinHashConfig())
    corpus = dedup_docs.fn(root, [flt], [sig], DedupConfig(), [urls, ext, flt])
    plain = dedup_docs.fn(root, [flt], [sig], DedupConfig())
    assert corpus.fingerprint != plain.fingerprint  # the funnel is part of the content
    db = corpus.path(Path(root), "corpus.duckdb")
    with duckdb.connect(str(db), read_only=True) as con:
        funnel = dict(
            ((stage, metric), value)
            for stage, metric, value in con.execute(
                "SELECT stage, metric, value FROM funnel WHERE warc = 'f.warc.gz'"
            ).fetchall()
        )
        samples = con.execute("SELECT count(*) FROM dropped_samples").fetchone()[0]
    assert funnel[("url_filter", "total")] == 8 and funnel[("url_filter", "kept")] == 7
    assert funnel[("extract", "kept")] == 7
    assert funnel[("filter", "kept_language")] == 6 and funnel[("filter", "kept")] == 5
    assert (funnel[("dedup", "total")], funnel[("dedup", "kept")]) == (
        5,
        3,
    )  # copy and mail are near-duplicates
    assert samples == 2
    md = funnel_markdown(db)
    assert "| f.warc.gz | 8 | 7 | 7 | 6 | 5 | 3 |" in md
    assert "| **total** |" in md
    assert funnel_markdown(plain.path(Path(root), "corpus.duckdb")) == ""
