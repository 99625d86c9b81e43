"""tasks/words.py against spaCy's blank English tokenizer and sentencizer (what FineWeb's
filters count with), on hand-picked cases and on the sample's extracted pages."""

from __future__ import annotations

from pathlib import Path

import pytest
import spacy

from fineflow.config import (
    ExtractConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    UrlFilterConfig,
)
from fineflow.tasks.extract import extract_docs
from fineflow.tasks.quality import gopher_quality, gopher_repetition
from fineflow.tasks.url_filter import filter_warc
from fineflow.tasks.words import is_symbol, sentences, words
from tests.helpers.e2e import SAMPLE_WARCS, head_warc

CASES = {
    "Don't stop: e.g. print(x) -- it's 5km away, isn't it?": [
        "Do", "n't", "stop", ":", "e.g.", "print(x", ")", "--", "it", "'s", "5", "km", "away",
        ",", "is", "n't", "it", "?",
    ],
    "See https://docs.python.org/3/library/os.html#os.path or os.path.join(a, b).": [
        "See", "https://docs.python.org/3/library/os.html#os.path", "or", "os.path.join(a",
        ",", "b", ")", ".",
    ],
    "The U.S. co-op's well-known data/config: 3.14... wait!": [
        "The", "U.S.", "co", "-", "op", "'s", "well", "-", "known", "data", "/", "config", ":",
        "3.14", "...", "wait", "!",
    ],
    "Call handler_0(event, context): returns Color.RED and email.message.Message.": [
        "Call", "handler_0(event", ",", "context", "):", "returns", "Color", ".", "RED", "and",
        "email.message", ".", "Message", ".",
    ],
    "I'm sure we'll see :) (you'd agree) 10GB $5 ''quoted''": [
        "I", "'m", "sure", "we", "'ll", "see", ":)", "(", "you", "'d", "agree", ")", "10", "GB",
        "$", "5", "''", "quoted", "''",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def nlp():
    pipeline = spacy.blank("en")
    pipeline.add_pipe("sentencizer")
    return pipeline


def spacy_words(nlp, text: str) -> list[str]:
    nlp.max_length = len(text) + 10
    return [t.text.strip() for t in nlp.make_doc(text) if t.text.strip()]


def spacy_sentences(nlp, text: str) -> int:
    return sum(bool(s.text.strip()) for s in nlp(text).sents)


@pytest.mark.parametrize("text", list(CASES))
def test_known_cases(nlp, text: str) -> None:
    assert words(text) == CASES[text]
    assert spacy_words(nlp, text) == CASES[text]  # the expectation is spaCy's own output
    assert sentences(text) == spacy_sentences(nlp, text)


def test_symbols_are_not_words() -> None:
    assert is_symbol(")") and is_symbol("...") and is_symbol("--") and is_symbol("):")
    assert not is_symbol("a)") and not is_symbol("3") and not is_symbol("•")


@pytest.fixture(scope="module")
def sample_pages(tmp_path_factory) -> list[str]:
    """Real pages: 60 records of a sample WARC through fineflow's URL filter + trafilatura."""
    import pyarrow.parquet as pq

    tmp = tmp_path_factory.mktemp("words")
    warc = head_warc(Path(SAMPLE_WARCS[0]), tmp / "head.warc.gz", 60)
    filter_warc(warc, tmp / "records.parquet", UrlFilterConfig())
    extract_docs(warc, tmp / "records.parquet", tmp / "docs.parquet", ExtractConfig(workers=0))
    return pq.read_table(tmp / "docs.parquet", columns=["text"]).column("text").to_pylist()


def test_same_tokens_and_decisions_as_spacy_on_sample(nlp, sample_pages: list[str]) -> None:
    assert len(sample_pages) >= 40
    same = 0
    for text in sample_pages:
        ours, theirs = words(text), spacy_words(nlp, text)
        same += ours == theirs
        # whatever tokens differ, the Gopher decisions must not
        for rule, cfg in ((gopher_quality, GopherQualityConfig()),
                          (gopher_repetition, GopherRepetitionConfig())):  # fmt: skip
            assert rule(text, cfg, ours) == rule(text, cfg, theirs)
        for line in text.splitlines()[:50]:
            assert sentences(line) == spacy_sentences(nlp, line), line
    assert same / len(sample_pages) >= 0.95


def test_url_rule_matches_what_spacys_does() -> None:
    """The user:password@ part is written `\\S+@` (linear) for spaCy's `\\S+(?::\\S*)?@`
    (quadratic on a long token full of ':'): the same tokens must match."""
    import random

    from spacy.lang.tokenizer_exceptions import URL_MATCH

    from fineflow.tasks.words import _URL

    rng = random.Random(0)
    tokens = [
        "ftp://user:pw@files.example.com/a",
        "user@mail.example.org",
        "a:b:c@d.example.com:8080/x?q=1",
        "http://x.y/" * 3,
        '{"k0":0,"k1":1}',
        "192.168.0.1:80",
        "a:@b.cd",
        ":@b.cd",
    ]
    tokens += [
        "".join(rng.choice("ab:/@.-1X") for _ in range(rng.randint(1, 14))) for _ in range(3000)
    ]
    tokens += [t + ".com" for t in tokens[:800]]
    matched = [t for t in tokens if URL_MATCH(t)]
    assert len(matched) > 100  # the sample exercises the rule, both ways
    assert [bool(_URL.match(t)) for t in tokens] == [bool(URL_MATCH(t)) for t in tokens]
