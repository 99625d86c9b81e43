"""Words and sentences the way FineWeb's filters count them.

FineWeb's Gopher, C4 and FineWeb rules count *words* as the tokens of spaCy's blank
English tokenizer (datatrove's `split_into_words`), and C4 counts *sentences* with
spaCy's rule-based sentencizer over those tokens. The difference from a plain
`\\w+` or whitespace split is large on real pages: spaCy cuts punctuation off as tokens
of its own ("print(x):" is four tokens), so code-heavy pages fall below Gopher's 80%
alphabetic-word rule under spaCy and not under a naive split.

This module reimplements that tokenizer's behaviour for English without spaCy (which
stays a test-only dependency that checks this file): text is split on whitespace;
each piece loses prefixes and suffixes (punctuation, quotes, currency, ellipses,
units after numbers, a final period after a lowercase letter or digit) one at a time
from both ends until a special case or nothing is left; what remains is kept whole
if it looks like a URL, otherwise cut at infixes (hyphens and slashes between
letters, commas between letters, a period between a lowercase and an uppercase
letter, ellipses); special cases (contractions "don't" -> do n't, abbreviations
"e.g.", emoticons) are kept or split as listed, also when they were cut apart by the
affix rules. On the bundled sample the token lists equal spaCy 3.8's for 98% of
documents, and every Gopher/C4/FineWeb decision is the same
(tests/tasks/test_words.py checks it against spaCy itself).
"""

from __future__ import annotations

import string
import unicodedata
from functools import lru_cache

import regex

# --- character classes --------------------------------------------------------------

_PUNCT = list("…,:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪") + ["……"]
_QUOTES = list("'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉〈〉⟦⟧")
_CURRENCY = "$ £ € ¥ ฿ US$ C$ A$ ₽ ﷼ ₴ ₠ ₡ ₢ ₣ ₤ ₥ ₦ ₧ ₨ ₩ ₪ ₫ ₭ ₮ ₯ ₰ ₱ ₲ ₳ ₵ ₶ ₷ ₸ ₹ ₺ ₻ ₼ ₾ ₿"
_UNITS = (
    "km km² km³ m m² m³ dm dm² dm³ cm cm² cm³ mm mm² mm³ ha µm nm yd in ft kg g mg µg t lb"
    " oz m/s km/h kmh mph hPa Pa mbar mb MB kb KB gb GB tb TB T G M K %"
)
_ELLIPSES = [r"\.\.+", "…"]
_SYMBOL = r"[\p{So}--[°]]"  # other symbols (icons, emoji), the degree sign excepted
_HYPHENS = r"---|--|——|-|–|—|~"


def _literal(items: list[str]) -> list[str]:
    return [regex.escape(i) for i in items]


def _either(items: list[str]) -> str:
    return "|".join(_literal(sorted(items, key=len, reverse=True)))


_Q = "".join(_literal(_QUOTES))
_P = "".join(_literal([p for p in _PUNCT if len(p) == 1]))

_PREFIX = regex.compile(
    "^(?:"
    + "|".join(
        ["§", "%", "=", "—", "–", r"\+(?![0-9])"]
        + _literal(_PUNCT)
        + _ELLIPSES
        + _literal(_QUOTES)
        + _literal(_CURRENCY.split())
        + [_SYMBOL]
    )
    + ")",
    regex.V1,
)
_SUFFIX = regex.compile(
    "|".join(
        f"(?:{p})$"
        for p in _literal(_PUNCT)
        + _ELLIPSES
        + _literal(_QUOTES)
        + [_SYMBOL, "'s", "'S", "’s", "’S", "—", "–"]
        + [
            r"(?<=[0-9])\+",
            r"(?<=°[FfCcKk])\.",
            rf"(?<=[0-9])(?:{_either(_CURRENCY.split())})",
            rf"(?<=[0-9])(?:{_either(_UNITS.split())})",
            rf"(?<=[0-9\p{{Ll}}%²\-\+{_P}{_Q}])\.",
            r"(?<=\p{Lu}\p{Lu})\.",
        ]
    ),
    regex.V1,
)
_INFIX = regex.compile(
    "|".join(
        _ELLIPSES
        + [_SYMBOL]
        + [
            r"(?<=[0-9])[+\-\*^](?=[0-9-])",
            rf"(?<=[\p{{Ll}}{_Q}])\.(?=[\p{{Lu}}{_Q}])",
            r"(?<=\p{L}),(?=\p{L})",
            rf"(?<=[\p{{L}}0-9])(?:{_HYPHENS})(?=\p{{L}})",
            r"(?<=[\p{L}0-9])[:<>=/](?=\p{L})",
        ]
    ),
    regex.V1,
)
# A URL or a dotted name ending in a lowercase "top-level domain" stays one token.
_URL = regex.compile(
    # user[:password]@ as `\S+@`: the same strings (\S covers ':'), but linear; spaCy's
    # nested `\S+(?::\S*)?@` backtracks quadratically on a long token with many ':'
    r"^(?:[\w+.-]{2,}://)?(?:\S+@)?"
    # private and loopback addresses are not URLs (spaCy's exclusions)
    r"(?:(?!(?:10|127)(?:\.\d{1,3}){3})(?!(?:169\.254|192\.168)(?:\.\d{1,3}){2})"
    r"(?!172\.(?:1[6-9]|2\d|3[0-1])(?:\.\d{1,3}){2})"
    r"(?:[1-9]\d?|1\d\d|2[01]\d|22[0-3])(?:\.(?:1?\d{1,2}|2[0-4]\d|25[0-5])){2}"
    r"\.(?:[1-9]\d?|1\d\d|2[0-4]\d|25[0-4])"
    r"|(?:(?:[A-Za-z0-9\u00a1-\uffff][A-Za-z0-9\u00a1-\uffff_-]{0,62})?[A-Za-z0-9\u00a1-\uffff]\.)+"
    r"\p{Ll}{2,63})"
    r"(?::\d{2,5})?(?:[/?#]\S*)?$",
    regex.V1,
)

# --- special cases ----------------------------------------------------------------------

_SPECIAL: dict[str, tuple[str, ...]] = {}


def _tokens(listing: str) -> list[str]:
    return listing.split()


_NOT_SPLIT = {"ill", "hell", "shell", "shed", "well", "were", "its", "whore"}
_PRONOUNS = {
    "i": ("m", "ll", "d", "ve"),
    "you": ("ll", "d", "ve", "re"),
    "he": ("ll", "d"),
    "she": ("ll", "d"),
    "it": ("ll", "d"),
    "we": ("ll", "d", "ve", "re"),
    "they": ("ll", "d", "ve", "re"),
}
_NEGATABLE = _tokens(
    "ca do does did is are was were have has had could would should might must need wo ai "
    "sha ought dare"
)
_WHOLE = _tokens(
    "e.g. i.e. E.g. I.e. a.m. p.m. Jr. Sr. Dr. Mr. Mrs. Ms. St. Mt. vs. Inc. Ltd. Co. "
    "Corp. Jan. Feb. Mar. Apr. Jun. Jul. Aug. Sep. Sept. Oct. Nov. Dec. '' and/or w/o 'em "
    "'cause ol' 's 'd 'll 're 've n't n’t ’s ’d ’ll ’re ’ve"
)
_EMOTICONS = _tokens(
    ":) :( ): (: :] [: :') :'( 8) 8-) :-) :-( ;) ;-) :P :p :D :/ :| =) (= <3 </3 :o) :-] "
    "[-: :> :o :O =] =[ :(( :)) :-)) (-: )-: ^_^ ^__^ -_- -__- o.O O.o O.O o.o 0.0 xD XD "
    "=D :x ;D >:( >:o :-P :-p :-D V.V v.v =3 =| :-/ :-| 8D 8-D ;-p ;p (^_^) (-_-) <33 :3 "
    ":-3 :-0 :0 :*"
)


def _special(orth: str, *parts: str) -> None:
    _SPECIAL[orth] = parts or (orth,)


for _ap in ("'", "’"):
    for _base in _NEGATABLE:
        for _b in (_base, _base.title()):
            _special(f"{_b}n{_ap}t", _b, f"n{_ap}t")
    for _pron, _ends in _PRONOUNS.items():
        for _p in {_pron, _pron.title(), "I" if _pron == "i" else _pron}:
            for _e in _ends:
                _special(f"{_p}{_ap}{_e}", _p, f"{_ap}{_e}")
for _pron, _ends in _PRONOUNS.items():
    for _p in {_pron, _pron.title(), "I" if _pron == "i" else _pron}:
        for _e in _ends:
            if (_p + _e).lower() not in _NOT_SPLIT:
                _special(_p + _e, _p, _e)
for _b in ("can", "Can"):
    _special(f"{_b}not", _b, "not")
for _w in ("gonna", "gotta", "Gonna", "Gotta"):
    _special(_w, _w[:3], _w[3:])
_special("y'all", "y'", "all")
for _w in _WHOLE + _EMOTICONS + [f"{c}." for c in string.ascii_lowercase]:
    _special(_w)
# Kept-whole cases that the affix rules cut apart are glued back afterwards.
_GLUE = {k for k, v in _SPECIAL.items() if len(v) == 1 and not k.isalnum()}
_GLUE_MAX = 4


# --- tokenizer --------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """The word tokens FineWeb's filters count (spaCy English rules, whitespace dropped)."""
    out: list[str] = []
    for piece in text.split():
        out.extend(_piece_tokens(piece))
    return out


def _piece_tokens(piece: str) -> tuple[str, ...]:
    """The tokens of one whitespace-separated piece."""
    if (piece.isalpha() or piece.isdigit()) and piece not in _SPECIAL:
        return (piece,)  # nothing to cut: the bulk of prose
    return _piece(piece)


@lru_cache(maxsize=1 << 16)
def _piece(piece: str) -> tuple[str, ...]:
    prefixes: list[str] = []
    suffixes: list[str] = []
    s, last = piece, -1
    while s and len(s) != last and s not in _SPECIAL:
        last = len(s)
        m = _PREFIX.match(s)
        pre = m.end() if m else 0
        if pre and s[pre:] in _SPECIAL:
            prefixes.append(s[:pre])
            s = s[pre:]
            break
        suf = _suffix_len(s[pre:])
        if suf and s[:-suf] in _SPECIAL:
            suffixes.append(s[-suf:])
            s = s[:-suf]
            break
        if pre and suf and pre + suf <= len(s):
            prefixes.append(s[:pre])
            suffixes.append(s[-suf:])
            s = s[pre:-suf]
        elif pre:
            prefixes.append(s[:pre])
            s = s[pre:]
        elif suf:
            suffixes.append(s[-suf:])
            s = s[:-suf]
    middle: list[str] = []
    if s in _SPECIAL:
        middle = list(_SPECIAL[s])
    elif s and _URL.match(s):
        middle = [s]
    elif s:
        start = 0
        for m in _INFIX.finditer(s):
            if m.start() == 0:
                continue
            middle += [s[start : m.start()], m.group()]
            start = m.end()
        middle.append(s[start:])
    tokens = prefixes + [t for t in middle if t] + suffixes[::-1]
    if len(tokens) > 1 and any(not t.isalnum() for t in tokens):
        tokens = _glue(tokens)
    return tuple(tokens)


_SUFFIX_WINDOW = 12  # longer than any suffix but a run of dots


def _suffix_len(s: str) -> int:
    """Length of the suffix the leftmost suffix match takes off `s` (0: none)."""
    start = max(0, len(s) - _SUFFIX_WINDOW)
    m = _SUFFIX.search(s, start)  # every suffix rule ends at $: only the tail can match
    if m and m.start() == start and start and s[start] == ".":
        m = _SUFFIX.search(s)  # a run of dots may reach further left
    return len(s) - m.start() if m else 0


def _glue(tokens: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        for j in range(min(len(tokens), i + _GLUE_MAX), i + 1, -1):
            joined = "".join(tokens[i:j])
            if joined in _GLUE:
                out.append(joined)
                i = j
                break
        else:
            out.append(tokens[i])
            i += 1
    return out


# --- sentences --------------------------------------------------------------------------

# Sentence-final characters: FineWeb's line-punctuation rule and the sentencizer's cuts.
TERMINAL = frozenset("!.?։؟۔܀܁܂߹।॥၊။።፧፨᙮᜵᜶᠃᠉᥄᥅᪨᪩᪪᪫᭚᭛᭞᭟᰻᰼᱾᱿‼‽⁇⁈⁉⸮⸼꓿꘎꘏꛳꛷꡶꡷꣎꣏꤯꧈꧉꩝꩞꩟꫰꫱꯫﹒﹖﹗！．？｡。")


def _is_punct(token: str) -> bool:
    return all(unicodedata.category(c).startswith("P") for c in token)


def sentences(text: str) -> int:
    """Sentences in `text` the way spaCy's sentencizer cuts them: after a token that is a
    sentence-final character, at the next token that is not punctuation. Whitespace other
    than a single space between two words is a token of its own there (so it can start a
    sentence); a sentence of whitespace alone is not counted."""
    count = 0
    started = after_final = False  # started: the current sentence has a visible token
    for m in _GAPS.finditer(text):
        gap, piece = m.group(1), m.group(2)
        if gap and (gap != " " or m.start() == 0) and after_final:
            after_final, started = False, False  # a whitespace token opens a sentence
        for token in _piece_tokens(piece):
            final = token in TERMINAL
            if after_final and not final and not _is_punct(token):
                after_final, started = False, False
            elif final:
                after_final = True
            if not started:
                count, started = count + 1, True
    return count


_GAPS = regex.compile(r"(\s*)(\S+)")


# Characters a token may consist of entirely and still be "a symbol, not a word" for
# Gopher's word-count and word-length rules: ASCII punctuation, common typographic
# punctuation, control characters and the sentence-final characters above.
SYMBOLS = (
    frozenset(
        string.punctuation
        + "—”％１〈、━【「」，】；“《„’∶´．（–？！：～«〉》）。…►»"
        + "".join(map(chr, [*range(0, 9), *range(11, 32), *range(127, 160)]))
    )
    | TERMINAL
)


_SYMBOL_CHARS = "".join(sorted(SYMBOLS))


def is_symbol(token: str) -> bool:
    return not token.strip(_SYMBOL_CHARS)


@lru_cache(maxsize=1 << 18)
def has_letter(token: str) -> bool:
    return any(c.isalpha() for c in token)
