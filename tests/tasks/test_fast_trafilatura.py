"""tasks/fast_trafilatura.py: the compiled pruning XPaths select what lxml's XPath selects,
on crafted trees, on random ones and on the sample's real pages, and trafilatura's text
comes out the same with and without them."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator

import pytest
import trafilatura.utils
import trafilatura.xpaths
from lxml import etree
from lxml import html as lxml_html

from fineflow.config import SAMPLE_DIR
from fineflow.tasks import fast_trafilatura as ft
from fineflow.tasks.extract import extract_main_text, prepare
from fineflow.tasks.warc import iter_records

RE = {"re": "http://exslt.org/regular-expressions"}


@pytest.fixture(autouse=True)
def _stock_afterwards() -> Iterator[None]:
    yield
    ft.use("off")
    ft.MISMATCHES.clear()
    ft.CHECKS.clear()


def same(path: str, doc: str) -> list[etree._Element]:
    """The compiled expression's answer, held equal to lxml's XPath on the same tree."""
    tree = lxml_html.fromstring(doc)
    fn = ft.compile_xpath(path)
    assert fn is not None, path
    got = fn(tree)
    assert got == etree.XPath(path, namespaces=RE)(tree)
    return got


def test_a_union_of_attributes_reads_the_first_in_source_order() -> None:
    doc = (
        '<div><p class="x" id="hidden">1</p><p id="hidden" class="x">2</p>'
        '<p class="hidden">3</p><p>4</p></div>'
    )
    assert [e.text for e in same(".//*[re:test(@class|@id, 'hidden')]", doc)] == ["2", "3"]
    assert [e.text for e in same(".//p[starts-with(@id|@class, 'x')]", doc)] == ["1"]


def test_equality_existence_and_absent_attributes() -> None:
    doc = '<div><p a="" b="y">1</p><p b="z">2</p><p>3</p><span a="q">4</span></div>'
    assert [e.text for e in same(".//*[@a]", doc)] == ["1", "4"]
    assert [e.text for e in same(".//*[@a|@b='z']", doc)] == ["2"]
    # an absent attribute is '' to a string function: a regex matching '' matches it
    assert [e.text for e in same(".//p[re:test(@a, '^$')]", doc)] == ["1", "2", "3"]
    assert [e.text for e in same(".//p[contains(@a, '')]", doc)] == ["1", "2", "3"]
    assert [e.text for e in same(".//p[re:test(@b, 'Y', 'i')]", doc)] == ["1"]


def test_translate_tags_descendants_and_not() -> None:
    doc = (
        '<div><section role="mainNav"><h1>t</h1></section><aside role="NavX">a</aside>'
        '<div id="Teaser">b</div><ol class="comment-list"><li>c</li></ol></div>'
    )
    nav = ".//*[self::section or self::aside][contains(translate(@role, 'NX', 'n'), 'navx')]"
    assert same(nav, doc) == []  # X is removed (no partner in the target string), not kept
    nav = ".//*[self::section or self::aside][contains(translate(@role, 'NX', 'n'), 'nav')]"
    assert [e.tag for e in same(nav, doc)] == ["section", "aside"]
    assert [e.tag for e in same(".//*[self::section or self::aside][not(.//h1)]", doc)] == ["aside"]
    lists = ".//*[self::div or self::ol][re:test(@class, 'comment')][not(self::ol or self::ul)]"
    assert same(lists, doc) == []
    assert len(same(".//*[self::div or @role][(@id and @role) or self::div]", doc)) == 1


@pytest.mark.parametrize(
    "path",
    [
        ".//cite|.//quote",  # a union of paths
        ".//p[1]",  # a position
        ".//p[string-length(@id) > 2]",  # another function
        ".//p[ancestor::div]",  # another axis
        ".//header",  # no predicate: it runs in C already
    ],
)
def test_what_it_does_not_speak_stays_an_xpath(path: str) -> None:
    assert ft.compile_xpath(path) is None


def test_every_pruning_expression_with_a_predicate_is_compiled() -> None:
    """A trafilatura upgrade whose expressions leave the subset shows here, not as a
    silent slowdown."""
    want = [
        f"{name}[{i}]"
        for name in ft.TARGETS
        for i, xp in enumerate(getattr(trafilatura.xpaths, name))
        if "[" in xp.path
    ]
    assert ft.compiled_names() == sorted(want)
    assert "OVERALL_DISCARD_XPATH[0]" in want


# values built from the tokens trafilatura's expressions look for, near misses included
_WORDS = (  # noqa: SIM905
    "cookie share Share shares social nav Nav navbar menu footer sidebar hidden hide-me "
    "display:none display: none reply-box comments-title comment Comment commentary "
    "article-comments teaser Teaser caption bottom bottom-bar padding-bottom-0 link "
    "permalink mvp-post-add-box infinite-scroll elementor-share-buttons ad-slot ad "
    "widget meta message akismet true respond content main x"
).split()
_TAGS = "div item list p section span ol ul details aside h1 header cite quote a li".split()  # noqa: SIM905
_ATTRS = "id class style role aria-hidden data-component data-lp-replacement-content".split()  # noqa: SIM905


def _random_doc(rng: random.Random, depth: int = 0) -> str:
    parts = []
    for _ in range(rng.randint(1, 4)):
        tag = rng.choice(_TAGS)
        attrs = rng.sample(_ATTRS, rng.randint(0, 3))  # random source order
        text = " ".join(f'{a}="{" ".join(rng.sample(_WORDS, rng.randint(0, 2)))}"' for a in attrs)
        inner = _random_doc(rng, depth + 1) if depth < 4 and rng.random() < 0.6 else "t"
        parts.append(f"<{tag} {text}>{inner}</{tag}>")
    return "".join(parts)


def test_random_trees_get_the_same_elements_from_every_expression() -> None:
    rng = random.Random(7)
    compiled = [
        (name, xp, ft.compile_xpath(xp.path))
        for name in ft.TARGETS
        for xp in getattr(trafilatura.xpaths, name)
    ]
    hits: Counter[str] = Counter()
    for _ in range(300):
        tree = lxml_html.fromstring(f"<html><body>{_random_doc(rng)}</body></html>")
        for name, xp, fn in compiled:
            if fn is not None:
                want = xp(tree)
                assert fn(tree) == want, (name, etree.tostring(tree))
                hits[name] += bool(want)
    # the trees are not vacuous: every list's expressions selected something
    assert all(hits[name] for name in ft.TARGETS), hits


def _sample_pages(n: int) -> list[str]:
    counts: Counter[str] = Counter()
    pages = []
    for warc in sorted((SAMPLE_DIR / "warcs").glob("*.warc.gz")):
        for rec in iter_records(warc, payload=True):
            if rec.warc_type != "response" or rec.content_type != "text/html":
                continue
            if (html := prepare(rec, counts)) is not None:
                pages.append(html)
                if len(pages) == n:
                    return pages
    return pages


def test_the_sample_pages_come_out_the_same() -> None:
    pages = _sample_pages(40)
    stock = [extract_main_text(p, True, False, True, accelerate=False) for p in pages]
    ft.use("check")  # every compiled call also runs the XPath and compares
    checked = [extract_main_text(p, True, False, True, accelerate=True) for p in pages]
    ft.use("on")
    fast = [extract_main_text(p, True, False, True, accelerate=True) for p in pages]
    assert ft.MISMATCHES == []
    assert ft.CHECKS["OVERALL_DISCARD_XPATH[0]"] >= len(pages)  # compared on every page
    assert fast == stock == checked
    assert sum(bool(t.text) for t in stock) > 20


def test_the_parser_gives_the_same_classes_without_calling_python() -> None:
    page = (
        "<html><body><form><input name='a'><select><option>x</option></select>"
        "<textarea>t</textarea><label>l</label></form><div>d</div></body></html>"
    )
    ft.use("off")
    stock = [type(e) for e in trafilatura.utils.load_html(page).iter()]
    ft.use("on")
    fast = [type(e) for e in trafilatura.utils.load_html(page).iter()]
    assert fast == stock
    assert lxml_html.FormElement in fast and lxml_html.HtmlElement in fast
