"""trafilatura, same output, less time: its pruning XPaths as compiled Python predicates,
and its HTML parser's element classes chosen in C.

Measured on a 723-page WARC of real pages (tasks/extract.py's settings, one core): of
~26 s of trafilatura, ~12 s went to nine XPath expressions that trafilatura evaluates
on every page to prune boilerplate (OVERALL_DISCARD_XPATH, PRECISION_DISCARD_XPATH, ...),
two of them 8 s. Most of that is `re:test(...)`: an EXSLT function that lxml runs as a
Python callback, once per element per regex, each call converting its arguments. And
~2 s went to lxml.html's element class lookup, a Python method called for every element
proxy lxml creates.

`compile_xpath(path)` turns an expression of the shape those lists use,
`.//*[self::div or self::p][pred][pred]` (or `.//name[...]`), into one Python function
that walks the tree once (the tag test done in C by `iterdescendants`) and evaluates the
predicates with the same semantics: `@a` (exists), `@a='x'` (any of the node-set equal),
`string(@a|@b)` (the first of them in source order, '' if none), `contains`,
`starts-with`, `translate`, `re:test` (Python's `re`, which is what lxml calls too),
`not(...)`, `self::name`, `.//name` (a descendant exists), `and`, `or`. Anything else
(unions of paths, positions, other functions, axes) makes it return None and the XPath
stays as it is (so does a plain path such as `.//header`: it runs in C already). `use("on")`
swaps the compiled functions into trafilatura.xpaths' lists (in place: trafilatura's modules
hold the same list objects); even an expression without `re:test` gains, since the walk
only visits the tags its first predicate names (measured per expression on that WARC:
OVERALL_DISCARD_XPATH[0] 4.5 -> 1.5 s, [1] 4.6 -> 2.4 s, TEASER_DISCARD_XPATH 0.58 ->
0.20 s, DISCARD_IMAGE_ELEMENTS 0.45 -> 0.11 s). It also gives trafilatura's parser a lookup
that maps the same tags to the same classes without calling Python (lxml's
ElementNamespaceClassLookup over ElementDefaultClassLookup); `use("off")` restores both.
`use("check")` runs the XPath and the compiled function on every call, returns the
XPath's answer and records any difference in `MISMATCHES`, the calls compared in
`CHECKS` (tests and bench/extract.py).
Extraction calls `use_for(cfg.accelerate)` on every page (a no-op once set).

The compiled function answers the same elements in the same (document) order for every
tree, so trafilatura's output is the same bytes: tests/tasks/test_fast_trafilatura.py
holds it to that on random trees and on the sample's pages, and `make bench-extract`
(bench/extract.py) on any WARC. Nothing is patched unless the expression's text is the
one compiled (a trafilatura upgrade is compiled afresh or left alone).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import trafilatura.utils
import trafilatura.xpaths
from lxml import etree
from lxml import html as lxml_html

Mode = Literal["on", "off", "check"]

# trafilatura.xpaths' lists of pruning expressions (the ones extraction evaluates per page)
TARGETS = (
    "RAW_TREE_PRUNE_XPATH",
    "REMOVE_COMMENTS_XPATH",
    "REMOVE_COMMENTS_AND_LISTS_XPATH",
    "OVERALL_DISCARD_XPATH",
    "TEASER_DISCARD_XPATH",
    "PRECISION_DISCARD_XPATH",
    "DISCARD_IMAGE_ELEMENTS",
    "COMMENTS_DISCARD_XPATH",
)
MISMATCHES: list[tuple[str, int, int]] = []  # check mode: (expression, XPath's count, ours)
CHECKS: Counter[str] = Counter()  # check mode: calls compared, per expression

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<lit>'[^']*'|"[^"]*")
    | (?P<desc>\.//)
    | (?P<axis>self::)
    | (?P<attr>@[A-Za-z_][\w.\-]*)
    | (?P<name>[A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.\-]*)?)
    | (?P<op>[\[\]\(\),|=*])
    )""",
    re.X,
)


class Unsupported(ValueError):
    """The expression uses XPath this compiler does not speak: it stays an XPath."""


def _tokens(path: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos, end = 0, len(path.rstrip())
    while pos < end:
        m = _TOKEN.match(path, pos)
        if m is None or m.end() == pos:
            raise Unsupported(f"cannot read {path[pos : pos + 20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Value(NamedTuple):
    kind: Literal["bool", "nodes", "str"]
    code: str  # a Python expression over `el` and the attribute variables (see _Parser.var)
    attrs: tuple[str, ...] = ()  # kind "nodes": the attribute names of the union


class _Parser:
    """Recursive descent over the predicate grammar; emits Python source. Each attribute
    the predicates name is read once per element into a variable (None: absent)."""

    def __init__(self, path: str) -> None:
        self.toks = _tokens(path)
        self.i = 0
        self.consts: dict[str, Any] = {}
        self.vars: dict[str, str] = {}  # attribute name -> its variable

    def peek(self, k: int = 0) -> tuple[str, str]:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ("end", "")

    def take(self, kind: str, text: str | None = None) -> str:
        k, t = self.peek()
        if k != kind or (text is not None and t != text):
            raise Unsupported(f"expected {text or kind}, got {t or 'the end'}")
        self.i += 1
        return t

    def const(self, value: object) -> str:
        name = f"_c{len(self.consts)}"
        self.consts[name] = value
        return name

    def var(self, attr: str) -> str:
        return self.vars.setdefault(attr, f"a{len(self.vars)}")

    def literal(self) -> str:
        return self.take("lit")[1:-1]

    # path := './/' ('*' | name) ('[' or ']')*
    def path(self) -> tuple[tuple[str, ...] | None, list[str]]:
        self.take("desc")
        k, t = self.peek()
        if k == "op" and t == "*":
            self.i += 1
            tags: tuple[str, ...] | None = None
        else:
            tags = (self.take("name"),)
        preds: list[str] = []
        while self.peek() == ("op", "["):
            self.i += 1
            start = self.i
            hoisted = self.tag_alternatives() if tags is None and not preds else None
            if hoisted is not None:  # [self::a or self::b] first: the walk's own tag filter
                tags = hoisted
            else:
                self.i = start
                preds.append(self.boolean(self.or_expr()))
            self.take("op", "]")
        if self.peek()[0] != "end":
            raise Unsupported(f"unexpected {self.peek()[1]!r}")
        return tags, preds

    def tag_alternatives(self) -> tuple[str, ...] | None:
        names = []
        while True:
            if self.peek()[0] != "axis":
                return None
            self.i += 1
            names.append(self.take("name"))
            if self.peek() == ("name", "or"):
                self.i += 1
                continue
            return tuple(names) if self.peek() == ("op", "]") else None

    def or_expr(self) -> _Value:
        return self.chain("or", self.and_expr)

    def and_expr(self) -> _Value:
        return self.chain("and", self.unary)

    def chain(self, op: str, operand: Callable[[], _Value]) -> _Value:
        """operand (op operand)*: one value, or the booleans joined by Python's `op`."""
        terms = [operand()]
        while self.peek() == ("name", op):
            self.i += 1
            terms.append(operand())
        if len(terms) == 1:
            return terms[0]
        return _Value("bool", "(" + f" {op} ".join(self.boolean(t) for t in terms) + ")")

    def unary(self) -> _Value:
        k, t = self.peek()
        if (k, t) == ("name", "not") and self.peek(1) == ("op", "("):
            self.i += 2
            inner = self.or_expr()
            self.take("op", ")")
            return _Value("bool", f"(not {self.boolean(inner)})")
        if (k, t) == ("op", "("):
            self.i += 1
            inner = self.or_expr()
            self.take("op", ")")
            return inner
        value = self.primary()
        if self.peek() == ("op", "="):
            self.i += 1
            lit = self.const(self.literal())
            if value.kind == "nodes":  # true if any node of the set has that string value
                terms = (f"{self.var(a)} == {lit}" for a in value.attrs)
                return _Value("bool", "(" + " or ".join(terms) + ")")
            if value.kind == "str":
                return _Value("bool", f"({value.code} == {lit})")
            raise Unsupported("= on a boolean")
        return value

    def primary(self) -> _Value:
        k, t = self.peek()
        if k == "axis":  # self::name
            self.i += 1
            return _Value("bool", f"(el.tag == {self.const(self.take('name'))})")
        if k == "desc":  # .//name: the element has such a descendant
            self.i += 1
            name = self.const(self.take("name"))
            return _Value("bool", f"(next(el.iterdescendants({name}), None) is not None)")
        if k == "attr":
            attrs = [self.take("attr")[1:]]
            while self.peek() == ("op", "|") and self.peek(1)[0] == "attr":
                self.i += 1
                attrs.append(self.take("attr")[1:])
            names = [self.var(a) for a in attrs]
            if len(attrs) == 1:
                code = f"({names[0]} or '')"
            else:  # string(@a|@b): the first of them in the element's source order
                code = f"_first(el, {tuple(attrs)!r}, ({', '.join(names)},))"
                if len(attrs) == 2:  # the order matters (and is read) only if both are there
                    x, y = names
                    code = f"(({y} or '') if {x} is None else {x} if {y} is None else {code})"
            return _Value("nodes", code, tuple(attrs))
        if k == "name" and self.peek(1) == ("op", "("):
            return self.call()
        raise Unsupported(f"unexpected {t!r}")

    def call(self) -> _Value:
        fn = self.take("name")
        self.take("op", "(")
        arg = self.or_expr()
        s = self.string(arg)
        if fn in ("contains", "starts-with"):
            self.take("op", ",")
            text = self.literal()
            self.take("op", ")")
            lit = self.const(text)
            code = f"({lit} in {s})" if fn == "contains" else f"{s}.startswith({lit})"
            on_empty = text == ""  # both are true of '' only for an empty literal
            return _Value("bool", self.unless_absent(arg, code, on_empty))
        if fn == "translate":
            self.take("op", ",")
            src = self.literal()
            self.take("op", ",")
            dst = self.literal()
            self.take("op", ")")
            return _Value("str", f"{s}.translate({self.const(_translation(src, dst))})")
        if fn == "re:test":
            self.take("op", ",")
            pattern = self.literal()
            flags = ""
            if self.peek() == ("op", ","):
                self.i += 1
                flags = self.literal()
            self.take("op", ")")
            if set(flags) - {"i"}:
                raise Unsupported(f"re:test flags {flags!r}")
            rx = re.compile(pattern, re.I if "i" in flags else 0)
            code = f"({self.const(rx.search)}({s}) is not None)"
            return _Value("bool", self.unless_absent(arg, code, rx.search("") is not None))
        raise Unsupported(f"function {fn}()")

    def unless_absent(self, arg: _Value, code: str, on_empty: bool) -> str:
        """`code` (a test of the string of `arg`), or its answer for '' when `arg` is
        attributes that are all absent, without calling anything."""
        if arg.kind != "nodes":
            return code
        absent = " and ".join(f"{self.var(a)} is None" for a in arg.attrs)
        return f"({on_empty} if {absent} else {code})"

    def boolean(self, v: _Value) -> str:
        if v.kind == "bool":
            return v.code
        if v.kind == "nodes":  # a node-set is true when it is not empty
            return "(" + " or ".join(f"{self.var(a)} is not None" for a in v.attrs) + ")"
        raise Unsupported("a string as a condition")

    @staticmethod
    def string(v: _Value) -> str:
        if v.kind in ("nodes", "str"):
            return v.code
        raise Unsupported("a boolean as a string")


def _translation(src: str, dst: str) -> dict[int, int | None]:
    """XPath translate(): a character's first occurrence in `src` maps to the character
    at the same place in `dst`, or is removed when `dst` is shorter."""
    table: dict[int, int | None] = {}
    for i, ch in enumerate(src):
        table.setdefault(ord(ch), ord(dst[i]) if i < len(dst) else None)
    return table


def _first(el: etree._Element, names: tuple[str, ...], values: tuple[str | None, ...]) -> str:
    """string(@a|@b|...): the value of whichever comes first in the element's source order
    (`values`: each name's value, None if absent)."""
    present = [(n, v) for n, v in zip(names, values, strict=True) if v is not None]
    if not present:
        return ""
    if len(present) > 1:
        order = el.keys()
        present.sort(key=lambda nv: order.index(nv[0]))
    return present[0][1]


class Compiled:
    """A compiled expression, called like the XPath it replaces (on an element)."""

    def __init__(self, xpath: etree.XPath, fn: Callable[[etree._Element], list], name: str) -> None:
        self.xpath, self.fn, self.name, self.path = xpath, fn, name, xpath.path
        self.check = False

    def __call__(self, tree: Any) -> list:
        if not isinstance(tree, etree._Element):  # a whole document: its root is a match too
            return self.xpath(tree)
        if not self.check:
            return self.fn(tree)
        want = self.xpath(tree)
        got = self.fn(tree)
        CHECKS[self.name] += 1
        if got != want:
            MISMATCHES.append((self.name, len(want), len(got)))
        return want


def compile_xpath(path: str) -> Callable[[etree._Element], list] | None:
    """`path` as one Python function of an element (the elements the XPath selects from it,
    in document order), or None if it uses XPath outside the supported subset."""
    try:
        p = _Parser(path)
        tags, preds = p.path()
    except Unsupported:
        return None
    if not preds:  # a plain path runs in C already
        return None
    walk = "tree.iterdescendants(" + (", ".join(map(repr, tags)) if tags else "'*'") + ")"
    reads = "".join(f"        {v} = get({a!r})\n" for a, v in p.vars.items())
    cond = " and ".join(preds)
    src = (
        "def match(tree):\n"
        "    out = []\n"
        f"    for el in {walk}:\n"
        "        get = el.get\n"
        f"{reads}"
        f"        if {cond}:\n"
        "            out.append(el)\n"
        "    return out\n"
    )
    scope: dict[str, Any] = {"_first": _first, **p.consts}
    exec(compile(src, f"<xpath {path.strip()[:40]!r}>", "exec"), scope)  # noqa: S102 - our own source
    return scope["match"]


def _case_variants(name: str) -> set[str]:
    return {"".join(c) for c in itertools.product(*((ch.lower(), ch.upper()) for ch in name))}


def _c_lookup() -> etree.ElementNamespaceClassLookup:
    """lxml.html's element classes (FormElement for <form>, ... HtmlElement otherwise) by a
    lookup that runs in C. lxml.html's own lower-cases the tag in Python: every case
    variant of its names is registered, so the classes are the same for any tag."""
    fallback = etree.ElementDefaultClassLookup(
        element=lxml_html.HtmlElement,
        comment=lxml_html.HtmlComment,
        pi=lxml_html.HtmlProcessingInstruction,
        entity=lxml_html.HtmlEntity,
    )
    lookup = etree.ElementNamespaceClassLookup(fallback)
    space = lookup.get_namespace(None)
    for name, cls in lxml_html.HtmlElementClassLookup._default_element_classes.items():
        for variant in _case_variants(name):
            space[variant] = cls
    return lookup


class _State:
    mode: Mode = "off"
    originals: dict[tuple[str, int], etree.XPath] = {}
    compiled: dict[tuple[str, int], Compiled] = {}
    c_lookup: etree.ElementNamespaceClassLookup | None = None


def _compiled() -> dict[tuple[str, int], Compiled]:
    """The expressions with predicates, compiled once per process."""
    if not _State.compiled and not _State.originals:
        for name in TARGETS:
            for i, xp in enumerate(getattr(trafilatura.xpaths, name, [])):
                if not isinstance(xp, etree.XPath):
                    continue
                fn = compile_xpath(xp.path)
                _State.originals[(name, i)] = xp
                if fn is not None:
                    _State.compiled[(name, i)] = Compiled(xp, fn, f"{name}[{i}]")
    return _State.compiled


def use(mode: Mode) -> None:
    """Accelerate trafilatura ("on"), restore it ("off"), or compare the two ("check")."""
    if mode == _State.mode:
        return
    compiled = _compiled()
    for (name, i), c in compiled.items():
        c.check = mode == "check"
        getattr(trafilatura.xpaths, name)[i] = _State.originals[(name, i)] if mode == "off" else c
    if _State.c_lookup is None:
        _State.c_lookup = _c_lookup()
    parser = trafilatura.utils.HTML_PARSER
    parser.set_element_class_lookup(
        lxml_html.HtmlElementClassLookup() if mode == "off" else _State.c_lookup
    )
    _State.mode = mode


def use_for(accelerate: bool) -> None:
    """What extraction asks for: "on" or "off" (check mode, set by a test or a benchmark,
    stays on while acceleration is wanted)."""
    if not accelerate:
        use("off")
    elif _State.mode != "check":
        use("on")


def compiled_names() -> list[str]:
    """The expressions that `use("on")` replaces, as LIST[index]."""
    return sorted(c.name for c in _compiled().values())
