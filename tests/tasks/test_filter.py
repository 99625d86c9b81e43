"""Stage "filter" as a task, and the funnel it feeds into corpus.duckdb."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
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


def _docs(path: Path) -> None:
    """docs.parquet of 21 texts the filters keep and drop for several reasons."""
    from fineflow.tasks.extract import DOCS_SCHEMA
    from tests.helpers.warc_factory import ARTICLES, FOREIGN_ARTICLES

    texts = ["\n".join([t, *ps]) for t, ps in ARTICLES] * 3
    texts += ["\n".join([t, *ps]) for t, ps in FOREIGN_ARTICLES.values()]
    texts += [ARTICLES[0][1][0] + " Mail bob@corp.com now.", "Too short.", "x\n" * 50]
    texts += ["{ curly } lorem ipsum dolor sit amet " * 20] + ["Buy. Now."] * 3
    rows = [
        {"id": f"id{i}", "url": f"https://d{i}.example/", "host": f"d{i}.example",
         "warc": "w.warc.gz", "date": "2024-03-01", "text": t, "length": len(t)}
        for i, t in enumerate(texts)
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=DOCS_SCHEMA), path)


def test_any_number_of_filter_processes_writes_the_same_bytes(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    import logging

    import fineflow.tasks.filter as filter_mod
    from fineflow.tasks.filter import judge_docs

    monkeypatch.setattr(filter_mod, "POOL_MIN_DOCS", 10)
    monkeypatch.setattr(filter_mod, "POOL_BATCH", 5)
    monkeypatch.setattr(filter_mod, "ROW_GROUP", 4)
    _docs(tmp_path / "docs.parquet")
    outs = {}
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        out.mkdir()
        cfg = FilterConfig(workers=workers, dropped_samples=2)
        with caplog.at_level(logging.INFO, logger="fineflow.filter"):
            counts = judge_docs(
                tmp_path / "docs.parquet", out / "docs.parquet", out / "dropped.parquet", cfg
            )
        outs[workers] = (
            counts,
            (out / "docs.parquet").read_bytes(),
            (out / "dropped.parquet").read_bytes(),
        )
    assert "in 3 processes" in caplog.text  # the pool really ran
    assert outs[1][0][0]["kept"] > 4 and outs[1][0][0]["total"] == 21
    assert outs[1] == outs[3]


def test_a_small_warc_is_judged_in_process(tmp_path: Path, caplog) -> None:
    import logging

    from fineflow.tasks.filter import judge_docs

    _docs(tmp_path / "docs.parquet")  # 21 documents, under POOL_MIN_DOCS
    with caplog.at_level(logging.INFO, logger="fineflow.filter"):
        judge_docs(
            tmp_path / "docs.parquet",
            tmp_path / "out.parquet",
            tmp_path / "dropped.parquet",
            FilterConfig(workers=2),
        )
    assert "processes" not in caplog.text
