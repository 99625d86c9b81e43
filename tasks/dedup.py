"""dedup: all WARCs' docs.parquet + signatures.parquet -> `corpus.duckdb`, one doc per cluster.

Corpus stage. DuckDB loads the band keys of all WARCs and groups them by (scope, band,
key): every document of a group with more than one member gets an edge to the group's
first document. Union-find over those edges (only documents with a candidate duplicate
ever enter Python) makes the clusters. Candidates are not re-verified by exact Jaccard: a
pair sharing a band is likely above ~0.7 similar (14 bands x 8 rows, FineWeb's setting;
see tasks/minhash.py).

First-seen order, incremental by construction: corpus order is WARC order as given (new
WARCs are appended), then row order within the WARC. The WARCs are decided one at a
time: a document is kept iff, once the edges of its own WARC are added, it is the first
document of its cluster; so a document joining an earlier cluster is dropped, each new
cluster keeps its first document, and no later WARC can turn an earlier decision round.
(A later document that bridges two earlier clusters merges them into one cluster with
two kept documents, each kept when it was first seen.) Adding a WARC therefore
re-decides only the new WARC's documents; the old WARCs' signatures are their cached
minhash artifacts, read as they are.

With `enabled` false every document is kept (an ablation's "no dedup" corpus); the
clusters are still found and recorded, so the shard stage's split by cluster keeps
near-duplicates on one side of it.

Scope (DedupConfig.scope): "crawl" (FineWeb's choice: documents are only compared within
their crawl) or "global". A WARC's crawl is the CC-MAIN-YYYY-WW id in its source URI
(Common Crawl puts it in the path: .../crawl-data/CC-MAIN-2024-10/segments/.../warc/
CC-MAIN-20240301...warc.gz; the flow hands dedup each WARC's WarcSource) or, failing
that, in its file name. Without either (a local file outside a crawl-data/ tree), the
ISO week of the CC-MAIN-<timestamp> in its file name stands in ("week-2024-09", an
approximation: a crawl takes about two weeks, so it may split in two scopes, which errs
towards keeping); failing that, "unknown" (all such WARCs share one scope).

DuckDB runs under DedupConfig.memory_limit and spills to a scratch directory beside the
artifact, so the corpus never has to fit in memory (bench/dedup.py: 1M documents).

corpus.duckdb: tables `documents` and `dedup_stats` (see storage/catalog.py). Manifest stats:
largest_cluster, crawls (the WARCs' crawls, comma-separated).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from prefect import task

from fineflow.config import DedupConfig
from fineflow.sources import crawl_of
from fineflow.storage import catalog, layout
from fineflow.storage.artifacts import ArtifactWriter, Manifest, stage_key
from fineflow.storage.fingerprint import fingerprint
from fineflow.tasks.download import WarcSource
from fineflow.tasks.filter import funnel_digest, load_funnel

STAGE_VERSION = 3  # 3: a WARC's crawl comes from its source URI
CORPUS_DB = "corpus.duckdb"
_EDGE_BATCH = 1 << 16
_READ_WINDOW = 8192  # ordinals per range query in iter_kept_*: bounded sorts, zonemap-pruned

log = logging.getLogger("fineflow.dedup")


class CorpusMismatch(ValueError):
    """The docs and signature artifacts do not describe the same documents."""


def clusters_from_edges(edges: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Union-find: each node that appears in an edge -> the smallest node of its component."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while (p := parent[x]) != x:
            parent[x] = parent[p]  # path halving keeps chains short
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            # The smaller root wins, so a component's root is always its first document.
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent}


def first_seen_clusters(
    edges: Iterable[tuple[int, int, int, int]],
) -> tuple[dict[int, int], set[int]]:
    """Union-find decided WARC by WARC: (node -> final cluster root, nodes dropped).

    `edges` are (generation, node, earlier node, its generation) sorted by generation,
    where a node's generation is its WARC's index. A node is dropped iff it is not the
    root of its cluster once its own generation's edges are in; roots are the smallest
    node. A node first met in a later generation had no edge in its own: it was kept.
    """
    parent: dict[int, int] = {}
    gen_of: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while (p := parent[x]) != x:
            parent[x] = parent[p]
            x = parent[x]
        return x

    dropped: set[int] = set()
    pending: list[int] = []  # nodes of the current generation
    current = None
    for gen, a, b, gen_b in edges:
        if gen != current:
            dropped.update(x for x in pending if find(x) != x)
            pending, current = [], gen
        for x, g in ((a, gen), (b, gen_b)):
            if x not in gen_of:
                gen_of[x] = g
                if g == gen:
                    pending.append(x)
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    dropped.update(x for x in pending if find(x) != x)
    return {x: find(x) for x in parent}, dropped


def _fail_on_rows(con: duckdb.DuckDBPyConnection, sql: str, message: str) -> None:
    rows = con.execute(sql + " LIMIT 5").fetchall()
    if rows:
        examples = ", ".join(" / ".join(str(v) for v in r) for r in rows)
        raise CorpusMismatch(f"{message}; e.g. {examples}")


def _load_ids(
    con: duckdb.DuckDBPyConnection, files: list[tuple[str, Path, Path]], scopes: list[str]
) -> None:
    """Temp tables files, doc_ids(warc_index, row, id, ordinal),
    bands(ordinal, warc_index, scope_id, band, key).

    Checks on the way that ids are unique and that docs and signatures name the same
    documents, WARC by WARC. Only id columns are read until then: Parquet projection
    leaves the texts on disk.
    """
    con.execute(
        "CREATE TEMP TABLE files (warc_index INTEGER, warc VARCHAR, docs VARCHAR, sigs VARCHAR,"
        " scope_id INTEGER)"
    )
    scope_ids: dict[str, int] = {}
    con.executemany(
        "INSERT INTO files VALUES (?, ?, ?, ?, ?)",
        [
            (i, warc, str(d), str(s), scope_ids.setdefault(scope, len(scope_ids)))
            for i, ((warc, d, s), scope) in enumerate(zip(files, scopes, strict=True))
        ],
    )
    sigs = {"sigs": [str(s) for _, _, s in files]}
    con.execute(
        """
        CREATE TEMP TABLE doc_ids AS
        SELECT f.warc_index, d.file_row_number AS row, d.id,
               row_number() OVER (ORDER BY f.warc_index, d.file_row_number) - 1 AS ordinal
        FROM read_parquet($docs, filename = true, file_row_number = true) d
        JOIN files f ON d.filename = f.docs
        """,
        {"docs": [str(d) for _, d, _ in files]},
    )
    # url_filter drops repeated ids within a WARC, so a repeat here spans WARCs: the
    # same WARC under two names, most likely; name them, not just the ids.
    _fail_on_rows(
        con,
        """SELECT id, count(*), string_agg(DISTINCT f.warc, ', ' ORDER BY f.warc)
           FROM doc_ids JOIN files f USING (warc_index)
           GROUP BY id HAVING count(*) > 1 ORDER BY id""",
        "document ids are not unique across the corpus: the same WARC listed twice under"
        " two names? (id / copies / WARCs)",
    )
    con.execute(
        """
        CREATE TEMP TABLE sig_ids AS
        SELECT DISTINCT f.warc_index, s.id
        FROM read_parquet($sigs, filename = true) s JOIN files f ON s.filename = f.sigs
        """,
        sigs,
    )
    _fail_on_rows(
        con,
        """SELECT f.warc, s.id FROM sig_ids s JOIN files f USING (warc_index)
           ANTI JOIN doc_ids d ON d.warc_index = s.warc_index AND d.id = s.id ORDER BY 1, 2""",
        "signatures name documents missing from the same WARC's docs (warc / id)",
    )
    _fail_on_rows(
        con,
        """SELECT f.warc, d.id FROM doc_ids d JOIN files f USING (warc_index)
           ANTI JOIN sig_ids s ON s.warc_index = d.warc_index AND s.id = d.id ORDER BY 1, 2""",
        "documents without signatures (warc / id)",
    )
    con.execute("DROP TABLE sig_ids")
    # Band keys by ordinal: five numbers a row, however long the ids are.
    con.execute(
        """
        CREATE TEMP TABLE bands AS
        SELECT d.ordinal, f.warc_index, f.scope_id, s.band, s.key
        FROM read_parquet($sigs, filename = true) s JOIN files f ON s.filename = f.sigs
        JOIN doc_ids d ON d.warc_index = f.warc_index AND d.id = s.id
        """,
        sigs,
    )


def _edges(con: duckdb.DuckDBPyConnection) -> Iterator[tuple[int, int, int, int]]:
    """(WARC index, document, first document of its shared bucket, that one's WARC index),
    in WARC order; streamed."""
    reader = con.sql(
        """
        WITH g AS (SELECT scope_id, band, key, min(ordinal) AS root,
                          arg_min(warc_index, ordinal) AS root_warc FROM bands
                   GROUP BY scope_id, band, key HAVING count(*) > 1)
        SELECT DISTINCT b.warc_index, b.ordinal, g.root, g.root_warc
        FROM bands b JOIN g USING (scope_id, band, key)
        WHERE b.ordinal <> g.root
        ORDER BY b.warc_index
        """
    ).to_arrow_reader(_EDGE_BATCH)
    for batch in reader:
        yield from zip(*(batch.column(i).to_pylist() for i in range(4)), strict=True)


def dedup_corpus(
    files: list[tuple[str, Path, Path]],
    db_path: Path,
    cfg: DedupConfig | None = None,
    scratch: Path | None = None,
    crawls: list[str] | None = None,
) -> dict[str, int]:
    """Build the corpus database from (warc name, docs.parquet, signatures.parquet) triples.

    `crawls`: each file's crawl (`crawl_of`), for "crawl" scope; default: from the names.
    """
    cfg = cfg or DedupConfig()
    crawls = crawls if crawls is not None else [crawl_of(w) for w, _, _ in files]
    if len(crawls) != len(files):
        raise ValueError(f"{len(crawls)} crawls for {len(files)} WARCs")
    scopes = crawls if cfg.scope == "crawl" else ["global"] * len(files)
    with catalog.connect(db_path) as con:
        con.execute(f"SET memory_limit = '{cfg.memory_limit}'")
        con.execute("SET preserve_insertion_order = false")
        con.execute("SET enable_progress_bar = false")
        if cfg.threads:
            con.execute(f"SET threads = {cfg.threads}")
        if scratch is not None:
            scratch.mkdir(parents=True, exist_ok=True)
            con.execute("SET temp_directory = ?", [str(scratch)])
        catalog.create_corpus_tables(con)
        _load_ids(con, files, scopes)
        root_of, dropped = first_seen_clusters(_edges(con))
        sizes = Counter(root_of.values())
        members = np.fromiter(root_of.keys(), dtype=np.int64, count=len(root_of))
        roots = np.fromiter(root_of.values(), dtype=np.int64, count=len(root_of))
        clusters = pa.table(
            {
                "ordinal": members,
                "root": roots,
                "size": np.array([sizes[r] for r in roots.tolist()], dtype=np.int32),
                "kept": np.array([m not in dropped for m in members.tolist()], dtype=bool),
            }
        )
        con.register("clusters_arrow", clusters)
        con.execute("CREATE TEMP TABLE clusters AS SELECT * FROM clusters_arrow")
        con.unregister("clusters_arrow")
        del root_of, dropped, members, roots, clusters
        for i, (_, docs_path, _) in enumerate(files):
            # One WARC at a time: the sort by row stays small and the table is stored in
            # corpus order, which iter_kept_texts' ordinal windows rely on for speed.
            con.execute(
                """
                INSERT INTO documents
                SELECT d.id, i.ordinal, d.url, d.host, d.warc, CAST(d.date AS VARCHAR), d.text,
                       d.length, coalesce(r.id, d.id), coalesce(c.size, 1),
                       NOT $dedup OR c.root IS NULL OR c.kept
                FROM read_parquet($path, file_row_number = true) d
                JOIN doc_ids i ON i.warc_index = $w AND i.row = d.file_row_number
                LEFT JOIN clusters c ON c.ordinal = i.ordinal
                LEFT JOIN doc_ids r ON r.ordinal = c.root
                ORDER BY i.ordinal
                """,
                {"path": str(docs_path), "w": i, "dedup": cfg.enabled},
            )
        con.execute(
            """
            INSERT INTO dedup_stats
            SELECT f.warc_index, f.warc, count(d.id), count(d.id) FILTER (WHERE d.keep),
                   count(d.id) FILTER (WHERE NOT d.keep)
            FROM files f LEFT JOIN doc_ids i USING (warc_index)
            LEFT JOIN documents d ON d.ordinal = i.ordinal
            GROUP BY f.warc_index, f.warc ORDER BY f.warc_index
            """
        )
        docs, kept = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE keep) FROM documents"
        ).fetchone()
        n_clusters = con.execute(
            "SELECT count(DISTINCT cluster_id) FROM documents WHERE cluster_size > 1"
        ).fetchone()[0]
        largest = con.execute("SELECT coalesce(max(cluster_size), 0) FROM documents").fetchone()[0]
        decisions = con.execute(
            "SELECT md5(string_agg(id || ':' || keep || ':' || cluster_id, ',' ORDER BY ordinal))"
            " FROM documents"
        ).fetchone()[0]
    return {
        "decisions_md5": decisions,
        "docs": docs,
        "kept": kept,
        "dropped_duplicate": docs - kept,
        "clusters": n_clusters,
        "largest_cluster": largest,
    }


def iter_kept(
    db_path: Path, columns: str, batch: int, limit: int | None
) -> Iterator[list[tuple[Any, ...]]]:
    """Rows of `columns` of the kept documents in corpus order, `batch` at a time."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    left = limit if limit is not None else -1
    pending: list[tuple[Any, ...]] = []
    with catalog.connect(db_path, read_only=True) as con:
        end = con.execute("SELECT coalesce(max(ordinal) + 1, 0) FROM documents").fetchone()[0]
        for lo in range(0, end, _READ_WINDOW):
            if left == 0:
                break
            cur = con.execute(
                f"SELECT {columns} FROM documents WHERE keep AND ordinal >= ? AND ordinal < ?"
                " ORDER BY ordinal" + (" LIMIT ?" if left > 0 else ""),
                [lo, lo + _READ_WINDOW] + ([left] if left > 0 else []),
            )
            while rows := cur.fetchmany(batch - len(pending)):
                pending.extend(rows)
                if left > 0:
                    left -= len(rows)
                if len(pending) == batch:
                    yield pending
                    pending = []
    if pending:
        yield pending


def iter_kept_texts(
    db_path: Path, batch: int = 1000, limit: int | None = None, key: str = "id"
) -> Iterator[list[tuple[str, str]]]:
    """(id, text) of kept documents in corpus order, `batch` at a time (the last may be short).
    key="cluster_id": (the id of the document's near-duplicate cluster, text)."""
    yield from iter_kept(db_path, f"{_key_column(key)}, text", batch, limit)


def iter_kept_ids(db_path: Path, batch: int = 10_000, key: str = "id") -> Iterator[list[str]]:
    """Ids (or cluster ids) of kept documents in corpus order, `batch` at a time."""
    for rows in iter_kept(db_path, _key_column(key), batch, None):
        yield [r[0] for r in rows]


def _key_column(key: str) -> str:
    if key not in ("id", "cluster_id"):
        raise ValueError(f"key must be id or cluster_id, not {key!r}")
    return key


def paired_files(
    root: Path, docs: list[Manifest], signatures: list[Manifest]
) -> list[tuple[str, Path, Path]]:
    """(WARC, docs.parquet, signatures.parquet) per WARC; CorpusMismatch if out of step."""
    if len(docs) != len(signatures):
        raise CorpusMismatch(f"{len(docs)} docs manifests, {len(signatures)} signature manifests")
    for d, s in zip(docs, signatures, strict=True):
        if d.warc != s.warc:
            raise CorpusMismatch(f"docs and signatures out of step: {d.warc} vs {s.warc}")
    return [
        (d.warc or d.key, d.path(root, "docs.parquet"), s.path(root, "signatures.parquet"))
        for d, s in zip(docs, signatures, strict=True)
    ]


def corpus_content(docs: list[Manifest], decisions_md5: str, funnel: list[Manifest]) -> str:
    """What corpus.duckdb holds, as a fingerprint: its bytes differ run to run, its meaning
    is the input documents, the keep/cluster decisions and the funnel tables."""
    content = fingerprint([d.fingerprint for d in docs], decisions_md5)
    return fingerprint(content, funnel_digest(funnel)) if funnel else content


@task(name="dedup")
def dedup_docs(
    root: str,
    docs: list[Manifest],
    signatures: list[Manifest],
    cfg: DedupConfig,
    funnel: list[Manifest] | None = None,
    sources: list[WarcSource] | None = None,
) -> Manifest:
    """Near-duplicate clusters over the whole corpus; keeps each cluster's first document.

    `funnel`: the per-WARC manifests of the stages before (url_filter, extract, filter),
    whose counts become the `funnel` table (and filter's dropped.parquet the
    `dropped_samples` table) of corpus.duckdb. `sources`: the WARCs as the download
    stage took them; a WARC's source URI names its crawl (the "crawl" scope).
    """
    base = Path(root)
    files = paired_files(base, docs, signatures)
    funnel = list(funnel or [])
    uri_of = {s.name: s.uri for s in sources or []}
    crawls = [crawl_of(w, uri_of.get(w)) for w, _, _ in files]
    # The crawls decide the scopes, so they are part of what names the output.
    key = stage_key(STAGE_VERSION, docs, signatures, cfg, crawls, *([funnel] if funnel else []))
    t0 = time.perf_counter()
    with ArtifactWriter(base, "dedup", key) as out:
        scratch = layout.work_dir(base, "dedup", key)  # DuckDB spills here, not in the artifact
        try:
            counts = dedup_corpus(files, out.path(CORPUS_DB), cfg, scratch, crawls)  # closed
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if funnel:
            with catalog.connect(out.path(CORPUS_DB)) as con:
                load_funnel(con, base, funnel)
        log.info(
            "dedup: %d docs, %d kept, %d dropped in %d clusters, crawls %s (%.1fs)",
            counts["docs"],
            counts["kept"],
            counts["dropped_duplicate"],
            counts["clusters"],
            dict(Counter(crawls)),
            time.perf_counter() - t0,
        )
        # which crawls the corpus spans (a WARC's crawl as dedup saw it, whatever the scope)
        stats = {
            "largest_cluster": counts.pop("largest_cluster"),
            "crawls": ",".join(sorted(set(crawls))),
        }
        content = corpus_content(docs, counts.pop("decisions_md5"), funnel)
        return out.commit(cfg, counts=counts, stats=stats, content=content)
