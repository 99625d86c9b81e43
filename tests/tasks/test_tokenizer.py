"""tokenizer: split pattern, round trips, the EOT token, byte lengths, determinism, the task."""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tokenizers import Tokenizer, pre_tokenizers

from fineflow.config import TokenizerConfig
from fineflow.tasks.tokenizer import (
    EOT,
    TOKENIZER_JSON,
    byte_decoder,
    hf_encoder,
    load_tokenizer,
    tiktoken_encoder,
    token_byte_lengths,
    train_bpe,
    train_tokenizer,
)
from tests.helpers.e2e import corpus_manifest

# A few paragraphs of prose written for these tests; with the stdlib docstrings below they
# make a few hundred lines of real text.
PROSE = """\
The orchard at the end of the lane had been planted by a schoolteacher in the 1920s, who
chose old varieties with names like Ashmead's Kernel, Blenheim Orange and Cornish Gilliflower.
Nobody pruned it for decades. By the time the village bought the land, the trees had grown
tall and tangled, and the apples were small, scabbed and astonishingly good.
Volunteers spent three winters cutting out dead wood, one branch at a time, because taking
too much in a single year makes a tree throw up a thicket of water shoots. They grafted
cuttings onto young rootstocks as insurance, labelled every tree with a steel tag, and
kept a notebook of which ones cropped in alternate years.
Now the orchard holds a harvest day each October. Children turn the handle of the cider
press, the juice runs brown and cloudy into jugs, and someone always brings a kettle so
that the older visitors can have tea while they argue about which apple is the best.
Café owners from the town buy the surplus; the rest is stored in the cool church crypt,
wrapped in newspaper, and eaten one by one until March.
Good maps are made by people who walk. A surveyor crossing a moor in 1850 carried a chain
of exactly 22 yards, a theodolite, a notebook and a great deal of patience, and he would
measure the same angle three times before trusting it. Triangulation let him fix the
position of distant hilltops without ever reaching them, and the errors, carefully
recorded, were spread across the whole network so that no single point carried them all.
"""


def _lines() -> list[str]:
    text = PROSE + "".join(
        inspect.getdoc(m) or "" for m in (argparse, csv, inspect, json, re, subprocess)
    )
    return [line for line in text.splitlines() if line.strip()]


HELD_OUT = [
    "Hello world's 12345 !!!\n\n  indented\ttabs and trailing space ",
    "naïve café, Ærøskøbing, Straße, Ελληνικά, русский, 日本語のテキスト, emoji 🍎🚲!",
    "def f(x: int) -> int:\n    return x ** 2  # squares\n",
    "A literal <|endoftext|> inside a document is just text.",
    "",
    "\u00a0\u200b\u3000 odd\u2028spaces\r\nand CRLF",
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(iter(_lines()), 600)


def test_corpus_is_a_few_hundred_lines() -> None:
    assert len(_lines()) >= 200


def test_split_is_gpt4_style(tok) -> None:
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("Hello world's 12345 !!!\n\n  x")]
    assert pieces == ["Hello", "Ġworld", "'s", "Ġ", "123", "45", "Ġ!!!ĊĊ", "Ġ", "Ġx"]


def test_vocab_and_eot(tok) -> None:
    assert 257 < tok.get_vocab_size() <= 600
    assert tok.token_to_id(EOT) == 0
    assert tok.get_added_tokens_decoder()[0].special
    assert tok.encode(EOT).ids == [0]  # one token, not a spelling of it
    assert [tok.id_to_token(i) for i in range(1, 4)] == ["!", '"', "#"]  # the bytes follow


@pytest.mark.parametrize("text", HELD_OUT)
def test_round_trip(tok, text: str) -> None:
    ids = hf_encoder(tok)([text])[0]
    assert tok.decode(ids) == text
    assert 0 not in ids  # a typed "<|endoftext|>" is text when encoding documents
    assert int(token_byte_lengths(tok)[ids].sum()) == len(text.encode())


def test_token_byte_lengths(tok) -> None:
    lengths = token_byte_lengths(tok)
    assert lengths.shape == (tok.get_vocab_size(),)
    assert lengths[0] == 0 and (lengths[1:257] == 1).all() and (lengths[257:] >= 2).all()
    assert set(byte_decoder()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert sorted(byte_decoder().values()) == list(range(256))
    assert byte_decoder()["Ġ"] == ord(" ") and byte_decoder()["Ċ"] == ord("\n")


def test_training_is_deterministic(tmp_path: Path) -> None:
    for name in ("a.json", "b.json"):
        train_bpe(iter(_lines()), 600).save(str(tmp_path / name))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    # Another process (other hash seeds, one Rust thread) writes the same bytes too.
    (tmp_path / "lines.json").write_text(json.dumps(_lines()))
    code = (
        "import json, sys; from tasks.tokenizer import train_bpe;"
        "train_bpe(json.load(open(sys.argv[1])), 600).save(sys.argv[2])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "7", "RAYON_NUM_THREADS": "1"}
    args = [sys.executable, "-c", code, str(tmp_path / "lines.json"), str(tmp_path / "c.json")]
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "c.json").read_bytes() == (tmp_path / "a.json").read_bytes()


def test_tiktoken_encoder_matches_hf_on_real_text(tok) -> None:
    fast = tiktoken_encoder(tok)
    assert fast is not None
    texts = HELD_OUT + [inspect.getsource(m) for m in (argparse, textwrap)] + _lines()
    assert fast(texts) == hf_encoder(tok)(texts)


def test_tiktoken_encoder_refuses_a_different_split(tok) -> None:
    spec = tok.to_str()
    changed = spec.replace(r"\\p{N}{1,3}", r"\\p{N}{1,2}")
    assert changed != spec
    assert tiktoken_encoder(Tokenizer.from_str(changed)) is None


def test_task_trains_on_kept_docs_only(tmp_path: Path) -> None:
    lines = _lines()
    docs = [(f"d{n}", "\n".join(lines[n : n + 10]), True) for n in range(0, len(lines), 10)]
    docs.append(("dropped", "zqxj " * 500, False))  # would surely become merges if read
    corpus = corpus_manifest(tmp_path, docs)
    m = train_tokenizer.fn(str(tmp_path), corpus, TokenizerConfig(vocab_size=500))
    assert m.stage == "tokenizer" and [f.path for f in m.files] == [TOKENIZER_JSON]
    assert m.counts["docs"] == len(docs) - 1
    assert m.stats == {"vocab_size": 500, "eot_id": 0}
    tok = load_tokenizer(m.path(tmp_path, TOKENIZER_JSON))
    assert tok.token_to_id("zq") is None and tok.token_to_id("Ġzqxj") is None
    spec = json.loads(m.path(tmp_path, TOKENIZER_JSON).read_text())
    assert spec["pre_tokenizer"]["pretokenizers"][1]["type"] == "ByteLevel"
    capped = train_tokenizer.fn(str(tmp_path), corpus, TokenizerConfig(vocab_size=500, max_docs=3))
    assert capped.counts["docs"] == 3 and capped.key != m.key
    again = train_tokenizer.fn(str(tmp_path), corpus, TokenizerConfig(vocab_size=500))
    assert again.fingerprint == m.fingerprint  # byte-identical tokenizer.json
