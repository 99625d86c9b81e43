"""tasks/quality.py: each FineWeb filter rule on texts built to trip it, and the chain."""

from __future__ import annotations

import pytest

from fineflow.config import (
    C4FilterConfig,
    FilterConfig,
    FineWebFilterConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageFilterConfig,
    PiiConfig,
)
from fineflow.tasks.quality import (
    EMAIL_PLACEHOLDERS,
    IP_PLACEHOLDERS,
    c4_filter,
    count_sentences,
    fineweb_quality,
    gopher_quality,
    gopher_repetition,
    identify_language,
    judge,
    language_reason,
    lid_model_path,
    reasons,
    redact_pii,
)
from tests.helpers.warc_factory import ARTICLES

PROSE = "\n\n".join(p for _, paras in ARTICLES for p in paras)  # ~1,500 words of clean prose
GR, GQ, C4, FW = (
    GopherRepetitionConfig(),
    GopherQualityConfig(),
    C4FilterConfig(),
    (FineWebFilterConfig()),
)


def test_clean_prose_passes_every_filter() -> None:
    v = judge(PROSE, FilterConfig())
    assert v.reason is None
    assert (v.language, v.language_score > 0.9) == ("en", True)


def test_language_id_is_offline_lid176() -> None:
    assert lid_model_path().name == "lid.176.ftz"
    assert identify_language("Le chat dort sur le canapé depuis ce matin.")[0] == "fr"
    assert identify_language(PROSE)[0] == "en"
    cfg = LanguageFilterConfig()
    assert language_reason("fr", 0.99, cfg) == "language_other"
    assert language_reason("en", 0.5, cfg) == "language_low_score"
    assert language_reason("en", 0.65, cfg) is None
    assert language_reason("fr", 0.99, LanguageFilterConfig(languages=["en", "fr"])) is None
    german = "Der Hund schläft seit heute Morgen auf dem Sofa und will nicht aufstehen. " * 10
    assert judge(german, FilterConfig()).reason == "language_other"


def test_gopher_repetition_rules() -> None:
    assert gopher_repetition(PROSE, GR) is None
    para = ARTICLES[0][1][0]
    assert gopher_repetition("\n\n".join([para] * 3 + [ARTICLES[1][1][0]]), GR) == (
        "gopher_rep_dup_para_frac"
    )
    lines = [f"line number {i} says something different" for i in range(10)]
    assert gopher_repetition("\n".join(lines + ["same line again"] * 8), GR) == (
        "gopher_rep_dup_line_frac"
    )
    # one long line repeated: few duplicate lines, but most of the characters
    text = "\n".join([f"short {i}" for i in range(20)] + [para, para])
    assert gopher_repetition(text, GR) == "gopher_rep_dup_line_char_frac"
    spam = PROSE[:400] + " buy now" * 60  # "buy now" dominates the bigrams
    assert gopher_repetition(spam, GR) == "gopher_rep_top_2gram"
    # a 12-word phrase repeated inside running text: caught by the repeated n-gram rules
    phrase = "the quick brown fox jumps over the lazy dog near the river "
    looped = " ".join(f"{phrase}and then sentence {i} moves on." for i in range(30))
    assert gopher_repetition(looped, GR).startswith("gopher_rep_")


def test_gopher_quality_rules() -> None:
    assert gopher_quality(PROSE, GQ) is None
    assert gopher_quality("Too few words here.", GQ) == "gopher_quality_few_words"
    assert gopher_quality("a b c d e f " * 20, GQ) == "gopher_quality_short_words"
    assert gopher_quality("#tag " * 60 + PROSE[:500], GQ) == "gopher_quality_symbol_ratio"
    bullets = "\n".join(f"- item {i} of the list, with the detail" for i in range(60))
    assert gopher_quality(bullets, GQ) == "gopher_quality_bullet_lines"
    trailing = "\n".join(f"and the story went on and on {i}..." for i in range(30))
    assert gopher_quality(trailing, GQ).startswith("gopher_quality_")
    no_stop = " ".join(["apple banana cherry walnut"] * 20)
    assert gopher_quality(no_stop, GQ) == "gopher_quality_stop_words"
    digits = " ".join(f"{i}.{i} 4/{i}" for i in range(100)) + " the and of to"
    assert gopher_quality(digits, GQ) in (
        "gopher_quality_non_alpha_words",
        "gopher_quality_short_words",
    )


def test_gopher_quality_counts_like_fineweb() -> None:
    """spaCy-style tokens: punctuation cut off counts against the alphabetic fraction."""
    code = "\n".join(f"Call handler_{i}(event, context): returns the result of step {i}."
                     for i in range(20))  # fmt: skip
    # a whitespace split sees ~89% of words with a letter; FineWeb's tokens ~69%
    assert sum(any(c.isalpha() for c in w) for w in code.split()) / len(code.split()) > 0.85
    assert gopher_quality(code, GQ) == "gopher_quality_non_alpha_words"
    # two *different* stop words are needed, as written (case-sensitive)
    one_stop = " ".join(["the apple banana cherry walnut"] * 20)
    assert gopher_quality(one_stop, GQ) == "gopher_quality_stop_words"
    assert gopher_quality(one_stop.replace("walnut", "And"), GQ) == "gopher_quality_stop_words"
    assert gopher_quality(one_stop.replace("walnut", "and"), GQ) is None
    # pure punctuation tokens do not count as words for the 50-word minimum
    assert gopher_quality("the cat and " * 16 + "! " * 60, GQ) == "gopher_quality_few_words"


def test_c4_removes_lines_and_drops_pages() -> None:
    page = PROSE + "\nShare\nThis site uses cookies to improve your experience today.\n"
    page += "Please enable JavaScript in your browser settings.\nA citation[1] stays here ok.\n"
    cleaned, why = c4_filter(page, C4)
    assert why is None
    assert "Share" not in cleaned and "cookies" not in cleaned and "JavaScript" not in cleaned
    assert "A citation stays here ok." in cleaned  # [1] cut, line kept
    assert c4_filter(PROSE + " lorem ipsum dolor", C4)[1] == "c4_lorem_ipsum"
    assert c4_filter(PROSE + " x = {1: 2}", C4)[1] == "c4_curly_bracket"
    assert c4_filter("One sentence only. Two here.", C4)[1] == "c4_too_few_sentences"
    # FineWeb turns the terminal-punctuation line rule off; C4 proper has it
    no_punct = PROSE + "\na heading without a full stop"
    assert "a heading without" in c4_filter(no_punct, C4)[0]
    assert "a heading without" not in c4_filter(no_punct, C4.model_copy(
        update={"terminal_punct_lines": True}))[0]  # fmt: skip
    assert count_sentences("One. Two! Three? Four") == 4
    # cut after . ! ? tokens only: "e.g." and "3.5" are words, "..." is not a full stop
    assert count_sentences("Use a tool, e.g. a hammer. Pi is 3.14 or so... yes!") == 2
    # "{" or "lorem ipsum" drop the page only on a line C4 keeps (3+ words)
    assert c4_filter(PROSE + "\n{x}\nlorem ipsum", C4)[1] is None
    assert c4_filter(PROSE + "\nset x to {1: 2}", C4)[1] == "c4_curly_bracket"


def test_fineweb_rules() -> None:
    assert fineweb_quality(PROSE, FW) is None
    no_punct = "\n".join(f"menu entry number {i} for the site navigation here" for i in range(20))
    assert fineweb_quality(no_punct, FW) == "fineweb_line_punct_ratio"
    short = "\n".join(["Short line."] * 3 + [f"Tiny {i}." for i in range(10)] + [PROSE[:300]])
    assert fineweb_quality(short, FW) == "fineweb_short_line_ratio"
    dup_line = "This exact line appears on the page twice over."
    doubled = "\n".join([dup_line, PROSE[:1500], dup_line])
    # ~3% of characters duplicated: kept at the paper's 0.1 (the default), dropped at
    # datatrove's 0.01
    assert fineweb_quality(doubled, FW) is None
    assert fineweb_quality(doubled, FW.model_copy(update={"char_dup_ratio": 0.01})) == (
        "fineweb_char_dup_ratio"
    )
    tripled = "\n".join([PROSE[:600], PROSE[600:1200], PROSE[:600]])
    assert fineweb_quality(tripled, FW) == "fineweb_char_dup_ratio"  # a third duplicated
    listy = "\n".join(f"Item{i}." for i in range(40)) + "\n" + PROSE[:200]
    assert fineweb_quality(listy, FW.model_copy(update={"short_line_thr": 1.0})) == (
        "fineweb_list_ratio"
    )


def test_pii_replaces_emails_and_public_ips_only() -> None:
    text = (
        "Write to jane.doe+lists@mail.example.org or admin@corp.co.uk. "
        "Server 8.8.8.8 and 203.0.113.9 (documentation), 10.0.0.1, 127.0.0.1, "
        "192.168.1.20, version 1.2.3.4.5 and 999.1.1.1."
    )
    out, emails, ips = redact_pii(text, PiiConfig())
    assert emails == 2 and ips == 1
    assert "jane.doe" not in out and "admin@corp" not in out
    assert sum(out.count(p) for p in EMAIL_PLACEHOLDERS) == 2
    assert "8.8.8.8" not in out and sum(out.count(p) for p in IP_PLACEHOLDERS) == 1
    for kept in ("203.0.113.9", "10.0.0.1", "127.0.0.1", "192.168.1.20", "1.2.3.4.5", "999.1.1.1"):
        assert kept in out
    assert redact_pii(text, PiiConfig())[0] == out  # deterministic placeholders
    assert redact_pii(text, PiiConfig(emails=False))[1] == 0


def test_chain_order_and_reason_list() -> None:
    cfg = FilterConfig()
    listed = reasons(cfg)
    assert len(listed) == len(set(listed))
    bad = "x = {1: 2} " + PROSE  # C4 curly bracket; earlier filters pass it
    assert judge(bad, cfg).reason == "c4_curly_bracket" in listed
    off = cfg.model_copy(update={"c4": C4FilterConfig(enabled=False)})
    assert judge(bad, off).reason is None


@pytest.mark.parametrize("n_words", [0, 1, 3])
def test_degenerate_texts_do_not_crash(n_words: int) -> None:
    v = judge(" ".join(["word"] * n_words), FilterConfig())
    assert v.reason is not None


def test_repeated_ngram_count_matches_the_plain_scan() -> None:
    """The candidate-only scan equals the definition: walk left to right, a remembered
    n-gram counts its characters and jumps n words ahead, anything else is remembered."""
    import random

    from fineflow.tasks.quality import _dup_ngram_chars, _Ngrams

    def plain(tokens: list[str], n: int) -> int:
        seen: set[tuple[str, ...]] = set()
        repeated = i = 0
        while i < len(tokens) - n + 1:
            gram = tuple(tokens[i : i + n])
            if gram in seen:
                repeated += sum(map(len, gram))
                i += n
            else:
                seen.add(gram)
                i += 1
        return repeated

    rng = random.Random(7)
    for trial in range(300):
        vocab = ["a", "bb", "ccc", "dd", "e"][: rng.randint(1, 5)]
        tokens = [rng.choice(vocab) for _ in range(rng.randint(0, 60))]
        for n in (1, 2, 3, 5):
            assert _dup_ngram_chars(_Ngrams(tokens), n) == plain(tokens, n), (trial, n, tokens)
