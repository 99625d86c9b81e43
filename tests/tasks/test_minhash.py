"""minhash: normalisation, shingles, band keys (identical, near-duplicate, unrelated), task."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fineflow.config import MinHashConfig
from fineflow.tasks.minhash import (
    SIGNATURES,
    band_keys,
    datasketch_signature,
    minhash_docs,
    normalize_text,
    shingles,
    signatures,
)
from tests.helpers.e2e import extract_manifest

# About 300 words of plain prose, written for these tests.
LIGHTHOUSE = """\
The keeper of the northern light climbed the spiral stairs twice every night, once at dusk
to trim the wick and polish the great lens, and once again a little after midnight to wind
the clockwork that turned it. The stairs had one hundred and twelve steps, worn hollow in
the middle by a century of boots, and she knew each of them by the sound it made. On calm
evenings the sea below was so quiet that she could hear the gulls settling on the rocks,
arguing softly about the best ledges before they slept. On stormy nights the whole tower
hummed like a struck bell, and spray rattled against the windows forty metres above the
waves. Her logbook recorded the weather at every watch: the direction of the wind, the
height of the swell, the ships that passed and the hour they passed. Most entries were
short, written in a small careful hand, but now and then she added a line about a whale
seen at dawn or a fishing boat that had waved its lantern in greeting. The supply boat
came once a fortnight when the weather allowed, bringing paraffin, flour, tea, letters and
the occasional newspaper already a week out of date. In winter it sometimes failed to come
for a month, and she learned to bake bread from whatever was left in the tins and to
ration the coal so that the kitchen stayed warm enough for the dough to rise. She never
thought of the work as lonely. The light had to burn, the ships had to see it, and there
was a quiet pride in knowing that somewhere out in the dark a navigator was checking his
chart against her beam and finding that all was as it should be. When the station was
finally automated, she kept the logbooks, all thirty-one of them, on a shelf by her bed.
"""

RIVER = """\
A healthy chalk stream runs clear and cold all year because it is fed by springs rather
than by rain running off the fields. The water has spent months or years filtering down
through porous rock, and it emerges at a nearly constant temperature, rich in dissolved
minerals. Watercress and crowfoot grow thickly in the shallows, sheltering the nymphs of
mayflies and the freshwater shrimp on which trout depend. Anglers and ecologists alike
watch the hatch each spring, since a poor emergence of mayflies is often the first sign
that something upstream has gone wrong: too much fertiliser washing in, too much water
abstracted for towns, or fine silt smothering the gravel where the fish lay their eggs.
"""


def _change_words(text: str, picks: dict[int, str]) -> str:
    words = text.split()
    for i, w in picks.items():
        words[i] = w
    return " ".join(words)


def test_normalize_text_folds_case_accents_punctuation_digits_space() -> None:
    assert normalize_text("  Café  DÉJÀ-vu,\n\tin 2024!  ") == "cafe dejavu in 0000"
    assert normalize_text("Ｆｕｌｌ　ｗｉｄｔｈ ① ٣") == "full width 0 0"  # NFKD: ① -> 1 -> 0
    assert normalize_text("“Quotes” — and… ellipses?") == "quotes and ellipses"
    assert normalize_text("") == ""


def test_shingles_word_ngrams_and_short_docs() -> None:
    assert shingles("One two three four five six", 5) == [
        b"one two three four five",
        b"two three four five six",
    ]
    assert shingles("Too short, really.", 5) == [b"too short really"]
    assert shingles("", 5) == [b""]


def test_identical_docs_identical_keys() -> None:
    cfg = MinHashConfig()
    sigs = signatures([LIGHTHOUSE, LIGHTHOUSE, LIGHTHOUSE.upper().replace(".", " .")], cfg)
    keys = band_keys(sigs, cfg.bands, cfg.rows)
    assert sigs.shape == (3, 112) and keys.shape == (3, 14) and keys.dtype == np.uint64
    assert (keys[0] == keys[1]).all() and (keys[0] == keys[2]).all()  # normalisation equates them
    assert len(set(keys[0].tolist())) == 14  # bands differ from each other


def test_near_duplicate_collides_unrelated_does_not() -> None:
    cfg = MinHashConfig()
    assert len(LIGHTHOUSE.split()) >= 300
    near = _change_words(LIGHTHOUSE, {10: "scrub", 120: "thunderous", 250: "sailor"})
    edited = _change_words(LIGHTHOUSE, {i: f"word{i}" for i in range(0, 300, 10)})  # 30 edits
    keys = band_keys(signatures([LIGHTHOUSE, near, RIVER, edited], cfg), cfg.bands, cfg.rows)
    shared = (keys[0] == keys).sum(axis=1)
    assert shared[1] >= 1, "3 words changed in 300: must share a band"
    assert shared[2] == 0, "an unrelated text must share no band"
    assert shared[3] < shared[1]  # one word in ten changed: far less alike


def test_band_keys_do_not_depend_on_the_process() -> None:
    cfg = MinHashConfig()
    here = band_keys(signatures([RIVER], cfg), cfg.bands, cfg.rows)[0].tolist()
    code = (
        "import sys; from fineflow.config import MinHashConfig as C;"
        "from tasks.minhash import band_keys, signatures;"
        "print(band_keys(signatures([sys.stdin.read()], C()), 14, 8)[0].tolist())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    there = subprocess.run(
        [sys.executable, "-c", code], input=RIVER, capture_output=True, text=True, env=env
    )
    assert there.returncode == 0, there.stderr
    assert there.stdout.strip() == str(here)


def test_minhash_task_writes_one_row_per_doc_and_band(tmp_path: Path) -> None:
    docs = extract_manifest(tmp_path, "w0.warc.gz", [("a", LIGHTHOUSE), ("b", RIVER), ("c", "")])
    cfg = MinHashConfig()
    m = minhash_docs.fn(str(tmp_path), docs, cfg)
    assert m.stage == "minhash" and m.warc == "w0.warc.gz" and m.counts == {"total": 3, "kept": 3}
    table = pq.read_table(m.path(tmp_path, SIGNATURES))
    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("band").type == pa.int16()
    assert table.schema.field("key").type == pa.uint64()
    assert table.num_rows == 3 * cfg.bands
    assert table.column("id").to_pylist() == ["a"] * 14 + ["b"] * 14 + ["c"] * 14
    assert table.column("band").to_pylist() == list(range(14)) * 3
    expected = band_keys(signatures([LIGHTHOUSE], cfg), 14, 8)[0]
    assert table.column("key").to_numpy()[:14].tolist() == expected.tolist()
    # Same inputs, same artifact: the key and the file content are reproducible.
    again = minhash_docs.fn(str(tmp_path), docs, cfg)
    assert again.key == m.key and again.fingerprint == m.fingerprint


@pytest.mark.parametrize("bands,rows", [(4, 2), (20, 5)])
def test_other_band_shapes(bands: int, rows: int) -> None:
    cfg = MinHashConfig(bands=bands, rows=rows)
    keys = band_keys(signatures([RIVER, RIVER], cfg), cfg.bands, cfg.rows)
    assert keys.shape == (2, bands) and (keys[0] == keys[1]).all()


def test_fast_path_equals_datasketch_minhash(monkeypatch: pytest.MonkeyPatch) -> None:
    """The numpy batch path is datasketch's affine64 MinHash over the same shingles."""
    import fineflow.tasks.minhash as mh

    cfg = MinHashConfig()
    texts = [LIGHTHOUSE, RIVER, "", "two words", LIGHTHOUSE + RIVER, _change_words(RIVER, {3: "x"})]
    monkeypatch.setattr(mh, "_CHUNK_SHINGLES", 64)  # force several chunks per batch
    fast = signatures(texts, cfg)
    assert fast.dtype == np.uint64 and fast.shape == (len(texts), 112)
    for text, row in zip(texts, fast, strict=True):
        ref = datasketch_signature(shingles(text, cfg.ngram), cfg)
        assert row.tolist() == ref.tolist()
    assert (fast >= 2**32).any(), "64-bit hash values, not 32"
    other_seed = signatures(texts[:1], MinHashConfig(seed=2))
    assert other_seed[0].tolist() != fast[0].tolist()


def _docs_file(path: Path, n: int) -> Path:
    """n documents, each a distinct slice of the two texts (ids d00000...)."""
    words = (LIGHTHOUSE + RIVER).split()
    texts = [" ".join(words[i % 200 : i % 200 + 20 + i % 90]) + f" doc{i}" for i in range(n)]
    ids = [f"d{i:05d}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "text": texts}), path)
    return path


def test_workers_sign_a_big_warc_to_the_same_bytes(tmp_path: Path, caplog) -> None:
    from fineflow.tasks.minhash import POOL_MIN_DOCS, signatures_to_parquet

    n = 2 * 1024 + 37  # three read batches
    assert n >= POOL_MIN_DOCS
    docs = _docs_file(tmp_path / "docs.parquet", n)
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"sig{workers}.parquet"
        with caplog.at_level("INFO", logger="fineflow.minhash"):
            counts = signatures_to_parquet(docs, out, MinHashConfig(workers=workers))
        assert counts == {"total": n, "kept": n}
        outs[workers] = out.read_bytes()
    assert f"signing {n} documents in 2 processes" in caplog.text  # the pool really ran
    assert outs[1] == outs[2]
    table = pq.read_table(tmp_path / "sig2.parquet")
    assert table.num_rows == 14 * n
    last = table.slice(table.num_rows - 14)
    text = pq.read_table(docs).column("text")[-1].as_py()
    assert last.column("id").to_pylist() == [f"d{n - 1:05d}"] * 14
    assert (
        last.column("key").to_pylist()
        == band_keys(signatures([text], MinHashConfig()), 14, 8)[0].tolist()
    )


def test_a_small_warc_is_signed_in_process(tmp_path: Path, caplog) -> None:
    from fineflow.tasks.minhash import signatures_to_parquet

    docs = _docs_file(tmp_path / "docs.parquet", 50)
    with caplog.at_level("INFO", logger="fineflow.minhash"):
        signatures_to_parquet(docs, tmp_path / "sig.parquet", MinHashConfig(workers=2))
    assert "processes" not in caplog.text
    assert pq.read_table(tmp_path / "sig.parquet").num_rows == 50 * 14


def test_importing_the_stage_leaves_datasketch_unloaded() -> None:
    """datasketch (and scipy under it) loads once signing starts: a cached run and each
    minhash process are spared ~0.5 s."""
    code = "import sys, fineflow.tasks.minhash; print('datasketch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
