"""dedup: exact and near duplicates across and within WARCs, first occurrence kept, id checks."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fineflow.tasks.dedup as dedup
from fineflow.config import DedupConfig, MinHashConfig
from fineflow.storage import catalog
from fineflow.storage.artifacts import ArtifactWriter, Manifest
from fineflow.tasks.dedup import (
    CORPUS_DB,
    CorpusMismatch,
    clusters_from_edges,
    crawl_of,
    dedup_docs,
    first_seen_clusters,
    iter_kept_ids,
    iter_kept_texts,
)
from fineflow.tasks.download import describe_sources
from fineflow.tasks.minhash import minhash_docs
from tests.helpers.e2e import extract_manifest

# Short pieces of prose on unrelated subjects, written for these tests.
BREAD = """\
A sourdough starter is nothing more than flour and water left long enough for wild yeasts
and lactic bacteria to settle in. Fed every day, it rises and falls like a slow tide, and
a baker learns to read it: a domed top and a sweet, yoghurt smell mean it is ready, while
a sunken surface and a sharp smell of vinegar mean it has been left hungry too long. The
dough it raises ferments overnight in a cool kitchen and bakes into a loaf with a dark,
blistered crust and an open, glossy crumb."""

BICYCLE = """\
Most squeaks on an old bicycle come from the chain, and most chains squeak because they
are dirty rather than dry. Oil poured onto grit simply makes a grinding paste. The cure is
to wipe the chain with a rag, scrub the links with a stiff brush and a little degreaser,
let it dry, and only then put a single drop of light oil on each roller. Spin the pedals
backwards for a minute, wipe off everything on the outside, and the chain will run quietly
for hundreds of kilometres."""

POST = """\
Before the penny post, letters in Britain were paid for by the person who received them,
and the price depended on the distance travelled and the number of sheets. People devised
ingenious ways to avoid paying: a pattern of marks on the outside of a folded letter could
tell the recipient that all was well, after which the letter was handed back unopened. The
reform of 1840 introduced a single cheap rate paid in advance, proved by a small adhesive
stamp, and the volume of mail doubled within a couple of years."""

CHESS = """\
Beginners are often told to control the centre, develop knights before bishops and castle
early, and these rules of thumb serve them well for years. Stronger players learn when to
break them. A pawn grab that looks greedy can be perfectly sound if the opponent has no
quick way to exploit the lost time, and a king left in the middle can be safe when the
centre is locked. The rules are compressed experience, useful precisely because most of
the time there is no time to calculate everything."""

BEES = """\
In winter a honeybee colony forms a tight cluster on the comb, with the queen near the
middle. Bees on the outside form an insulating shell while those inside shiver their
flight muscles to make heat, and they swap places slowly through the cold months. The
cluster eats its way upward through the stored honey, so a hive can starve in early spring
with full frames only a hand's width away if a long cold spell stops the bees from
breaking formation to reach them."""

TIDES = """\
A rock pool is a small sea that is cut off from the ocean twice a day. When the tide goes
out the water in it warms in the sun, loses oxygen and grows saltier as it evaporates, and
everything living there must endure hours of conditions that would kill animals from the
open water. Anemones close into jelly-like knobs, limpets clamp down on their home scars,
and crabs wedge themselves into crevices to wait for the returning tide."""


def _near(text: str) -> str:
    """Three words changed: a near-duplicate (Jaccard of 5-grams about 0.8)."""
    words = text.split()
    for i, w in ((5, "mostly"), (40, "quietly"), (70, "gently")):
        words[i] = w
    return " ".join(words)


# Ids sort the other way round from corpus order, so "first" cannot mean "smallest id".
WARC0 = [("z1", BREAD), ("z2", BICYCLE), ("z3", POST), ("z4", BREAD)]  # z4: exact dup of z1
WARC1 = [
    ("a1", BREAD),  # exact duplicate of z1 across WARCs
    ("a2", _near(BICYCLE)),  # near duplicate of z2
    ("a3", CHESS),
    ("a4", BEES),
    ("a5", CHESS),  # exact duplicate within the WARC
    ("a6", TIDES),
]


@pytest.fixture()
def corpus(tmp_path: Path) -> tuple[Path, list[Manifest], list[Manifest], Manifest]:
    docs = [
        extract_manifest(tmp_path, "w0.warc.gz", WARC0),
        extract_manifest(tmp_path, "w1.warc.gz", WARC1),
    ]
    sigs = [minhash_docs.fn(str(tmp_path), d, MinHashConfig()) for d in docs]
    return tmp_path, docs, sigs, dedup_docs.fn(str(tmp_path), docs, sigs, DedupConfig())


def test_drops_exactly_the_later_duplicates(corpus) -> None:
    root, _, _, m = corpus
    assert m.stage == "dedup"
    assert m.counts == {"docs": 10, "kept": 6, "dropped_duplicate": 4, "clusters": 3}
    with catalog.connect(m.path(root, CORPUS_DB), read_only=True) as con:
        rows = con.execute(
            "SELECT id, ordinal, warc, cluster_id, cluster_size, keep FROM documents"
            " ORDER BY ordinal"
        ).fetchall()
        stats = con.execute("SELECT * FROM dedup_stats ORDER BY warc_index").fetchall()
        text_ok = con.execute(
            "SELECT count(*) FROM documents WHERE length = length(text) AND url LIKE 'https://%'"
        ).fetchone()[0]
    assert [r[0] for r in rows] == [i for i, _ in WARC0 + WARC1]  # corpus order
    assert [r[1] for r in rows] == list(range(10))
    dropped = {r[0] for r in rows if not r[5]}
    assert dropped == {"z4", "a1", "a2", "a5"}
    cluster = {r[0]: (r[3], r[4]) for r in rows}
    assert cluster["z1"] == cluster["z4"] == cluster["a1"] == ("z1", 3)
    assert cluster["z2"] == cluster["a2"] == ("z2", 2)
    assert cluster["a3"] == cluster["a5"] == ("a3", 2)
    assert cluster["z3"] == ("z3", 1) and cluster["a6"] == ("a6", 1)
    assert stats == [(0, "w0.warc.gz", 4, 3, 1), (1, "w1.warc.gz", 6, 3, 3)]
    assert text_ok == 10


def test_dedup_off_keeps_every_document_and_still_records_the_clusters(corpus) -> None:
    root, docs, sigs, on = corpus
    off = dedup_docs.fn(str(root), docs, sigs, DedupConfig(enabled=False))
    assert off.key != on.key
    assert off.counts == {"docs": 10, "kept": 10, "dropped_duplicate": 0, "clusters": 3}
    with_dedup, without = _decisions(root, on), _decisions(root, off)
    assert all(keep for keep, _, _ in without.values())
    # the same clusters: the shard split by cluster keeps near-duplicates on one side
    assert {i: c[1:] for i, c in without.items()} == {i: c[1:] for i, c in with_dedup.items()}
    clusters = [c for b in iter_kept_ids(off.path(root, CORPUS_DB), key="cluster_id") for c in b]
    assert clusters.count("z1") == 3 and clusters.count("a3") == 2


def test_iter_kept_texts_streams_kept_docs_in_corpus_order(corpus, monkeypatch) -> None:
    root, _, _, m = corpus
    db = m.path(root, CORPUS_DB)
    kept = ["z1", "z2", "z3", "a3", "a4", "a6"]
    monkeypatch.setattr(dedup, "_READ_WINDOW", 3)  # batches must cross the range windows
    batches = list(iter_kept_texts(db, batch=4))
    assert [len(b) for b in batches] == [4, 2]
    assert [i for b in batches for i, _ in b] == kept
    assert dict(t for b in batches for t in b)["a4"] == BEES
    assert [i for b in iter_kept_texts(db, batch=2, limit=3) for i, _ in b] == kept[:3]
    assert [len(b) for b in iter_kept_texts(db, batch=2, limit=3)] == [2, 1]
    assert [i for b in iter_kept_ids(db, batch=5) for i in b] == kept


def test_warc_order_decides_which_copy_survives(corpus) -> None:
    root, docs, sigs, _ = corpus
    m = dedup_docs.fn(str(root), docs[::-1], sigs[::-1], DedupConfig())
    kept = [i for b in iter_kept_texts(m.path(root, CORPUS_DB)) for i, _ in b]
    assert kept == ["a1", "a2", "a3", "a4", "a6", "z3"]


def test_ids_must_match_between_docs_and_signatures(corpus) -> None:
    root, docs, sigs, _ = corpus
    short = extract_manifest(root, "w1.warc.gz", WARC1[:-1], tag="-short")  # no a6
    short_sigs = minhash_docs.fn(str(root), short, MinHashConfig())
    with pytest.raises(CorpusMismatch, match=r"documents without signatures.*w1.warc.gz / a6"):
        dedup_docs.fn(str(root), docs, [sigs[0], short_sigs], DedupConfig())
    with pytest.raises(CorpusMismatch, match=r"missing from the same WARC's docs.*a6"):
        dedup_docs.fn(str(root), [docs[0], short], sigs, DedupConfig())
    with pytest.raises(CorpusMismatch, match="not unique"):
        dedup_docs.fn(str(root), [docs[0], docs[0]], [sigs[0], sigs[0]], DedupConfig())
    with pytest.raises(CorpusMismatch, match="1 docs manifests, 2 signature"):
        dedup_docs.fn(str(root), docs[:1], sigs, DedupConfig())
    with pytest.raises(CorpusMismatch, match="out of step"):
        dedup_docs.fn(str(root), docs, sigs[::-1], DedupConfig())


def test_artifact_holds_only_the_closed_database(corpus) -> None:
    root, _, _, m = corpus
    assert [f.path for f in m.files] == [CORPUS_DB]
    names = sorted(p.name for p in (root / m.dir).iterdir() if not p.name.startswith("."))
    assert names == [CORPUS_DB, "manifest.json"]


def test_clusters_from_edges_is_transitive_and_rooted_at_the_first() -> None:
    roots = clusters_from_edges([(9, 4), (4, 7), (3, 5), (7, 2), (8, 8)])
    assert roots == {9: 2, 4: 2, 7: 2, 2: 2, 3: 3, 5: 3, 8: 8}
    assert clusters_from_edges([]) == {}


def _sigs(root: Path, warc: str, keys: dict[str, dict[int, int]]) -> Manifest:
    """A hand-made signatures artifact: doc id -> {band: key}; other bands get unique keys."""
    rows = []
    for n, (doc, planted) in enumerate(keys.items()):
        for band in range(14):
            rows.append((doc, band, planted.get(band, hash((warc, n, band)) & (2**63 - 1))))
    table = pa.table(
        {
            "id": [r[0] for r in rows],
            "band": pa.array([r[1] for r in rows], pa.int16()),
            "key": pa.array([r[2] for r in rows], pa.uint64()),
        }
    )
    with ArtifactWriter(root, "minhash", f"s-{warc}", warc=warc) as out:
        pq.write_table(table, out.path("signatures.parquet"))
        return out.commit(None)


def _decisions(root: Path, m: Manifest) -> dict[str, tuple[bool, str, int]]:
    with catalog.connect(m.path(root, CORPUS_DB), read_only=True) as con:
        rows = con.execute("SELECT id, keep, cluster_id, cluster_size FROM documents").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_a_new_warc_never_flips_an_earlier_kept_document(tmp_path: Path) -> None:
    # A and B share no band; C (a later WARC) shares a band with each: it bridges them.
    w = [f"CC-MAIN-2024-10-{i}.warc.gz" for i in range(3)]
    docs = [
        extract_manifest(tmp_path, w[0], [("A", BREAD), ("A2", POST)]),
        extract_manifest(tmp_path, w[1], [("B", CHESS), ("B2", BEES)]),
        extract_manifest(tmp_path, w[2], [("C", TIDES), ("D", BICYCLE), ("D2", BICYCLE)]),
    ]
    sigs = [
        _sigs(tmp_path, w[0], {"A": {0: 1}, "A2": {}}),
        _sigs(tmp_path, w[1], {"B": {1: 2}, "B2": {5: 9}}),
        _sigs(tmp_path, w[2], {"C": {0: 1, 1: 2}, "D": {5: 9}, "D2": {7: 7}}),
    ]
    before = _decisions(tmp_path, dedup_docs.fn(str(tmp_path), docs[:2], sigs[:2], DedupConfig()))
    assert all(keep for keep, _, _ in before.values())
    after = _decisions(tmp_path, dedup_docs.fn(str(tmp_path), docs, sigs, DedupConfig()))
    for doc, (keep, _, _) in before.items():
        assert after[doc][0] == keep, f"{doc} flipped"
    # C joined the earlier clusters and goes; A and B were each kept when first seen.
    assert after["C"] == (False, "A", 3) and after["B"] == (True, "A", 3)
    assert after["D"] == (False, "B2", 2)  # a duplicate of an earlier WARC's document
    assert after["D2"][0] is True
    # Everything at once decides the same way as WARC after WARC.
    assert _decisions(tmp_path, dedup_docs.fn(str(tmp_path), docs, sigs, DedupConfig())) == after


CC = "https://data.commoncrawl.org/crawl-data"
SEG = "segments/1707947473347.0/warc"
# Common Crawl file names carry a timestamp, not the crawl id: the id is in the URL's path.
FEB20 = "CC-MAIN-20240220000000-20240220010000-00000.warc.gz"  # ISO week 8
MAR01 = "CC-MAIN-20240301000000-20240301010000-00001.warc.gz"  # ISO week 9
MAR02 = "CC-MAIN-20240302000000-20240302010000-00002.warc.gz"  # ISO week 9


def _same_page_in(tmp_path: Path, uris: list[str]) -> tuple[list[Manifest], list[Manifest]]:
    """One WARC per URI, each holding the same page (d0, d1, ...)."""
    names = [uri.rsplit("/", 1)[-1] for uri in uris]
    docs = [extract_manifest(tmp_path, n, [(f"d{i}", BREAD)]) for i, n in enumerate(names)]
    return docs, [minhash_docs.fn(str(tmp_path), d, MinHashConfig()) for d in docs]


def test_crawl_scope_comes_from_the_source_uri(tmp_path: Path) -> None:
    # Same ISO week by file name, two crawls by URL: only the URL can tell them apart.
    uris = [f"{CC}/CC-MAIN-2024-09/{SEG}/{MAR01}", f"{CC}/CC-MAIN-2024-10/{SEG}/{MAR02}"]
    docs, sigs = _same_page_in(tmp_path, uris)
    sources = describe_sources(uris)
    root = str(tmp_path)
    per_crawl = dedup_docs.fn(root, docs, sigs, DedupConfig(), None, sources)
    assert per_crawl.counts["dropped_duplicate"] == 0  # the same page in two crawls stays
    assert per_crawl.stats["crawls"] == "CC-MAIN-2024-09,CC-MAIN-2024-10"
    everything = dedup_docs.fn(root, docs, sigs, DedupConfig(scope="global"), None, sources)
    assert _decisions(tmp_path, everything)["d1"] == (False, "d0", 2)
    # Without the URIs the names fall back to the ISO week: one scope, deduplicated.
    by_name = dedup_docs.fn(root, docs, sigs, DedupConfig())
    assert by_name.counts["dropped_duplicate"] == 1
    assert by_name.stats["crawls"] == "week-2024-09"
    assert by_name.key != per_crawl.key  # different scopes, different artifacts


def test_one_crawl_over_two_weeks_is_one_scope(tmp_path: Path) -> None:
    # CC-MAIN-2024-10 ran from Feb 20 to Mar 5: its WARCs' timestamps span two ISO weeks.
    uris = [f"{CC}/CC-MAIN-2024-10/{SEG}/{FEB20}", f"{CC}/CC-MAIN-2024-10/{SEG}/{MAR01}"]
    docs, sigs = _same_page_in(tmp_path, uris)
    by_uri = dedup_docs.fn(str(tmp_path), docs, sigs, DedupConfig(), None, describe_sources(uris))
    assert _decisions(tmp_path, by_uri)["d1"] == (False, "d0", 2)
    by_name = dedup_docs.fn(str(tmp_path), docs, sigs, DedupConfig())
    assert by_name.counts["dropped_duplicate"] == 0  # week 8 and week 9: two scopes


def test_crawl_of_uris_names_and_the_fallbacks() -> None:
    assert crawl_of(MAR01, f"{CC}/CC-MAIN-2024-10/{SEG}/{MAR01}") == "CC-MAIN-2024-10"
    s3 = f"s3://commoncrawl/crawl-data/CC-MAIN-2023-50/{SEG}/{MAR01}"
    assert crawl_of(MAR01, s3) == "CC-MAIN-2023-50"  # the URI wins over the name's week
    assert crawl_of("CC-MAIN-2024-18.part-00001.warc.gz", "/data/x.warc.gz") == "CC-MAIN-2024-18"
    assert crawl_of("crawl-data/CC-MAIN-2024-10/segments/1/warc/x.warc.gz") == "CC-MAIN-2024-10"
    # A local file with neither: the ISO week of the name's timestamp, else "unknown".
    assert crawl_of(MAR01, f"/home/me/warcs/{MAR01}") == "week-2024-09"
    assert crawl_of(MAR01) == "week-2024-09"
    assert crawl_of(FEB20) == "week-2024-08"
    assert crawl_of("my.warc.gz", "file:///tmp/my.warc.gz") == "unknown"
    # A 14-digit timestamp is not a crawl id.
    assert crawl_of("x.warc.gz", f"{CC}/CC-MAIN-20240301000000/x.warc.gz") == "unknown"


def test_first_seen_clusters_decides_each_generation_once() -> None:
    # gen 0: 1~0; gen 1: 3~2; gen 2: 4 bridges 0 and 2; 5~4 in the same generation
    edges = [(0, 1, 0, 0), (1, 3, 2, 1), (2, 4, 0, 0), (2, 4, 2, 1), (2, 5, 4, 2), (2, 7, 6, 1)]
    roots, dropped = first_seen_clusters(edges)
    assert dropped == {1, 3, 4, 5, 7}  # 6: first met in gen 2, but kept in its own gen 1
    assert set(roots.values()) == {0, 6}
    assert first_seen_clusters([]) == ({}, set())


def test_dedup_spills_under_a_small_memory_limit(corpus) -> None:
    root, docs, sigs, m = corpus
    small = dedup_docs.fn(str(root), docs, sigs, DedupConfig(memory_limit="64MB", threads=1))
    assert small.fingerprint == m.fingerprint  # same decisions under any memory limit
    assert not list(root.glob("dedup/.*.work"))  # the scratch directory is removed
