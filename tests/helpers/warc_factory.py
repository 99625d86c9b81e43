"""Small, deterministic WARCs for tests, written with warcio.

`build_warc(path, captures, ...)` writes a warcinfo record, then for every
capture a request record and a response record (full HTTP/1.1 header block),
one gzip member per record as Common Crawl does (or a plain .warc). It can
damage the result: flip a member's CRC32 (`corrupt_crc`), garble a member's
deflate data (`corrupt_data`), or cut bytes off the end (`truncate`).

`article(i)` gives a real-looking HTML page of several hundred words of prose
(written for these tests), so trafilatura keeps its main text.
"""

from __future__ import annotations

import gzip
import io
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from urllib.parse import urlsplit

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

DATE = "2024-03-01T00:00:00Z"
_REASONS = {200: "OK", 301: "Moved Permanently", 404: "Not Found", 500: "Internal Server Error"}


@dataclass
class Capture:
    """One HTTP response to put in a WARC."""

    url: str
    body: bytes
    status: int = 200
    content_type: str | None = "text/html; charset=utf-8"  # None: no Content-Type header
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunked: bool = False  # send the body with Transfer-Encoding: chunked


@dataclass(frozen=True)
class Written:
    """Where a response landed: the member offset and the record id (bare uuid)."""

    url: str
    offset: int
    record_id: str


def record_id(url: str, kind: str = "response") -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{kind}:{url}"))


def _serialize(record) -> bytes:
    out = io.BytesIO()
    WARCWriter(out, gzip=False).write_record(record)
    return out.getvalue()


def _writer() -> WARCWriter:
    return WARCWriter(io.BytesIO(), gzip=False)


def warcinfo_record(name: str) -> bytes:
    w = _writer()
    rec = w.create_warcinfo_record(name, {"software": "fineflow tests", "format": "WARC 1.0"})
    rec.rec_headers.replace_header("WARC-Record-ID", f"<urn:uuid:{record_id(name, 'info')}>")
    rec.rec_headers.replace_header("WARC-Date", DATE)
    return _serialize(rec)


def request_record(url: str) -> bytes:
    parts = urlsplit(url)
    http = StatusAndHeaders(
        f"GET {parts.path or '/'} HTTP/1.1",
        [("Host", parts.netloc), ("User-Agent", "fineflow-tests")],
        is_http_request=True,
    )
    rec = _writer().create_warc_record(
        url,
        "request",
        payload=io.BytesIO(b""),
        length=0,
        http_headers=http,
        warc_headers_dict={
            "WARC-Record-ID": f"<urn:uuid:{record_id(url, 'request')}>",
            "WARC-Date": DATE,
        },
    )
    return _serialize(rec)


def _chunk(body: bytes, size: int = 100) -> bytes:
    parts = [
        b"%x\r\n" % len(body[i : i + size]) + body[i : i + size] + b"\r\n"
        for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def response_record(cap: Capture) -> bytes:
    headers = [("Content-Type", cap.content_type)] if cap.content_type else []
    body = cap.body
    if cap.chunked:
        headers.append(("Transfer-Encoding", "chunked"))
        body = _chunk(body)
    else:
        headers.append(("Content-Length", str(len(body))))
    headers += cap.headers
    http = StatusAndHeaders(
        f"{cap.status} {_REASONS.get(cap.status, 'Status')}", headers, protocol="HTTP/1.1"
    )
    rec = _writer().create_warc_record(
        cap.url,
        "response",
        payload=io.BytesIO(body),
        length=len(body),
        http_headers=http,
        warc_headers_dict={"WARC-Record-ID": f"<urn:uuid:{record_id(cap.url)}>", "WARC-Date": DATE},
    )
    return _serialize(rec)


def build_warc(
    path: Path,
    captures: list[Capture],
    *,
    compress: bool = True,
    requests: bool = True,
    corrupt_crc: tuple[int, ...] = (),
    corrupt_data: tuple[int, ...] = (),
    truncate: int = 0,
    single_stream: bool = False,
) -> list[Written]:
    """Write a WARC; return where each capture's response landed (index = capture index).

    corrupt_crc / corrupt_data name capture indexes whose response member is damaged;
    truncate cuts that many bytes off the end of the file; single_stream gzips the
    whole file as one member (as `gzip file.warc` would) instead of one per record.
    """
    path = Path(path)
    units: list[tuple[str | None, bytes]] = [(None, warcinfo_record(path.name))]
    for cap in captures:
        if requests:
            units.append((None, request_record(cap.url)))
        units.append((cap.url, response_record(cap)))

    out = bytearray()
    written: list[Written] = []
    if single_stream:
        out += gzip.compress(b"".join(data for _, data in units), mtime=0)
        written = [Written(url, 0, record_id(url)) for url, _ in units if url]
    else:
        for url, data in units:
            member = gzip.compress(data, mtime=0) if compress else data
            if url is not None:
                idx = len(written)
                member = bytearray(member)
                if idx in corrupt_crc:
                    member[-8] ^= 0xFF  # the CRC32 of the trailer
                if idx in corrupt_data:
                    mid = len(member) // 2
                    member[mid : mid + 8] = bytes(b ^ 0x5A for b in member[mid : mid + 8])
                written.append(Written(url, len(out), record_id(url)))
            out += member
    if truncate:
        del out[-truncate:]
    path.write_bytes(bytes(out))
    return written


# --- page bodies -------------------------------------------------------------------------

ARTICLES: list[tuple[str, list[str]]] = [
    (
        "Keeping a sourdough starter alive through a busy week",
        [
            "A sourdough starter is less demanding than its reputation suggests. At its heart "
            "it is only flour and water that have been colonised by wild yeasts and lactic "
            "acid bacteria, and those organisms are remarkably forgiving. What they need is "
            "food, a reasonable temperature and a little attention at regular intervals.",
            "Most bakers who lose a starter do so in the middle of an ordinary week, when "
            "feeding it slips down the list of chores. The simplest remedy is to slow it "
            "down. A jar kept in the refrigerator needs feeding perhaps once a week rather "
            "than twice a day, because the cold makes the microbes sluggish. Take it out "
            "the evening before you plan to bake, give it a generous meal, and by morning "
            "it should have doubled and smell pleasantly sour rather than sharp.",
            "If a grey liquid collects on top, do not panic. That layer, which bakers call "
            "hooch, is mostly alcohol produced by hungry yeast. Pour it off or stir it back "
            "in, then feed the starter with equal weights of flour and water. Whole rye "
            "flour is a particularly good tonic for a tired culture, since it carries more "
            "nutrients and more of the organisms that give the bread its flavour.",
            "A healthy starter rises and falls on a predictable rhythm. Mark the level on "
            "the side of the jar with a rubber band after feeding, and note how long it "
            "takes to peak. Once you know that rhythm you can plan a bake around it, "
            "mixing the dough when the starter is at its most vigorous, and the loaf will "
            "reward you with an open crumb and a crisp, blistered crust.",
        ],
    ),
    (
        "What lives in a rock pool at low tide",
        [
            "Twice a day the sea withdraws from rocky shores and leaves behind small basins "
            "of water that are worlds of their own. A rock pool looks still from above, but "
            "a few minutes of patient watching reveals a crowded neighbourhood of animals "
            "that have learned to survive heat, cold, fresh rain and sudden waves.",
            "Anemones are usually the first thing a visitor notices. Closed, they look like "
            "blobs of red jelly stuck to the rock; open, they spread a ring of tentacles "
            "that sting and hold small prey. Nearby, limpets clamp themselves down so "
            "tightly that they seem part of the stone. Each one grinds a shallow scar into "
            "the rock and returns to the very same spot after grazing on algae.",
            "Look under the fronds of seaweed and you may find shore crabs, which scuttle "
            "sideways into the shadows, and tiny fish such as blennies that rest on their "
            "fins and watch you with bulging eyes. Periwinkles trundle slowly across the "
            "bottom, and if you are lucky a starfish will be working its way, almost "
            "invisibly, towards a mussel it intends to open and eat.",
            "The best way to explore is gently. Turn stones over slowly and put them back "
            "the way you found them, because the creatures living underneath depend on the "
            "shade and damp. Keep an eye on the tide tables, wear shoes with a good grip, "
            "and leave every animal where it belongs when the water starts to return.",
        ],
    ),
    (
        "A plain guide to cleaning a bicycle chain",
        [
            "The chain is the hardest working part of a bicycle and usually the dirtiest. "
            "Every turn of the pedals drags it over the teeth of the chainring and the "
            "cassette, and every wet ride coats it in grit that acts like sandpaper. A "
            "chain that is cleaned and lubricated regularly shifts more smoothly, runs more "
            "quietly and lasts a great deal longer than one that is left to fend for itself.",
            "Start by wiping the chain with a rag while you turn the cranks backwards. That "
            "alone removes a surprising amount of muck. For a deeper clean, use a degreaser "
            "and a stiff brush, working along the inner and outer plates and between the "
            "rollers, then rinse with a little water and let everything dry completely.",
            "Lubricant should go onto the rollers, not sprayed across the whole drivetrain. "
            "Apply a single drop to each roller as the chain passes, spin the cranks for a "
            "minute so the oil can work its way inside, and then wipe off the excess from "
            "the outside. Oil left on the surface only attracts more dirt.",
            "Finally, measure the chain for wear. Chains stretch as the pins and rollers "
            "wear, and a stretched chain quickly ruins the much more expensive cogs it "
            "runs on. An inexpensive checking tool tells you at a glance when it is time "
            "for a new one, and replacing a chain early is one of the cheapest ways to keep "
            "a bicycle running well for many years.",
        ],
    ),
    (
        "Starting a compost heap in a small garden",
        [
            "Composting turns kitchen scraps and garden waste into a dark, crumbly material "
            "that improves almost any soil. It does not need a large plot or expensive "
            "equipment. A simple bin made of pallets, or a plastic container with holes "
            "drilled in the sides, is enough to get started in a corner of a small garden.",
            "The secret is balance. Green materials such as vegetable peelings, coffee "
            "grounds and fresh grass clippings supply nitrogen, while brown materials such "
            "as dry leaves, shredded cardboard and straw supply carbon. Too much green and "
            "the heap turns slimy and smells; too much brown and it sits unchanged for "
            "months. Roughly equal volumes of each make a good working mixture.",
            "Air and moisture matter just as much. The microbes that break down the waste "
            "need oxygen, so turn the heap with a fork every few weeks, and keep it about as "
            "damp as a wrung out sponge. In dry weather add a little water; in a wet winter "
            "cover the top with an old piece of carpet or a sheet of cardboard.",
            "After several months the bottom of the heap will have become compost, sweet "
            "smelling and full of worms. Spread it on beds as a mulch or dig it into the "
            "soil before planting, and start the cycle again with the fresh scraps that "
            "have accumulated on top in the meantime.",
        ],
    ),
]


def article(i: int, *, meta_charset: str | None = "utf-8", extra: str = "") -> str:
    """A full HTML page around ARTICLES[i % len(ARTICLES)], with nav and footer boilerplate."""
    title, paragraphs = ARTICLES[i % len(ARTICLES)]
    meta = f'<meta charset="{meta_charset}">' if meta_charset else ""
    body = "\n".join(f"<p>{escape(p)}{extra}</p>" for p in paragraphs)
    return f"""<!DOCTYPE html>
<html lang="en"><head>{meta}<title>{escape(title)}</title></head>
<body>
<nav><a href="/">Home</a> | <a href="/about">About</a> | <a href="/archive">Archive</a></nav>
<main><article>
<h1>{escape(title)}</h1>
{body}
</article></main>
<footer><p>Copyright 2024. All rights reserved.</p></footer>
</body></html>
"""


def png_bytes() -> bytes:
    """A small valid PNG (8x8 grey), i.e. binary data full of NULs."""
    raw = b"".join(b"\x00" + bytes([128] * 8) for _ in range(8))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


# Prose in scripts that legacy charsets serve (Shift_JIS, windows-1251), for decoding tests
FOREIGN_ARTICLES: dict[str, tuple[str, list[str]]] = {
    "ja": (
        "季節を映す和菓子の楽しみ方",
        [
            "日本の伝統的な和菓子は、季節の移り変わりを映す小さな芸術品です。春には桜餅、"
            "夏には水羊羹、秋には栗きんとん、冬には花びら餅が店先に並び、訪れる人の目を"
            "楽しませます。職人は何年もかけて技を磨き、餡の甘さや生地の柔らかさを細かく"
            "調整しながら、その年の気候に合わせた味を作り出します。",
            "和菓子を味わうときは、まず見た目を楽しみ、次に香りを確かめ、最後にゆっくりと"
            "口に運ぶのがよいとされています。濃い抹茶と一緒にいただくと、甘さがほどよく"
            "和らぎ、素材の風味がいっそう引き立ちます。小さな菓子一つにも、作り手の季節への"
            "思いが込められているのです。",
            "近年は若い職人たちが新しい形や色を取り入れ、海外の人々にも和菓子の魅力を伝えて"
            "います。伝統を守りながらも工夫を重ねることで、和菓子の文化はこれからも受け"
            "継がれていくことでしょう。",
        ],
    ),
    "ru": (
        "Зимний вечер в деревне",
        [
            "Зимой в деревне рано темнеет, и жизнь переходит в дом. Печь топят с утра, а "
            "вечером вся семья собирается за столом, чтобы пить чай с вареньем и "
            "разговаривать о прошедшем дне. За окном тихо падает снег, и кажется, что время "
            "течёт медленнее, чем в городе.",
            "Старики вспоминают, какими были зимы в их детстве: сугробы выше забора, катание "
            "на санях с горы и долгие праздники после Нового года. Дети слушают эти истории "
            "с открытыми глазами, а потом выбегают во двор лепить снеговика при свете фонаря.",
            "Утром на снегу видны следы зайцев и лисиц, пришедших из леса ночью. Хозяйка "
            "кормит кур, хозяин расчищает дорожку к колодцу, и новый день начинается так же, "
            "как начинались сотни дней до него.",
        ],
    ),
}


def foreign_article(lang: str, *, meta_charset: str | None = None) -> str:
    """A full HTML page around FOREIGN_ARTICLES[lang] ("ja" or "ru"), like `article`."""
    title, paragraphs = FOREIGN_ARTICLES[lang]
    meta = f'<meta charset="{meta_charset}">' if meta_charset else ""
    body = "\n".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    return f"""<!DOCTYPE html>
<html lang="{lang}"><head>{meta}<title>{escape(title)}</title></head>
<body>
<nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<main><article>
<h1>{escape(title)}</h1>
{body}
</article></main>
<footer><p>Copyright 2024.</p></footer>
</body></html>
"""


def deep_article(i: int, depth: int) -> str:
    """`article(i)` with `depth` nested <div>s (holding a line of text) before its <main>."""
    head, main = article(i).split("<main>", 1)
    return head + "<div>" * depth + "Inside the nest." + "</div>" * depth + "<main>" + main


def bloated_article(i: int, size: int) -> str:
    """`article(i)` grown to at least `size` characters by inline JSON after the article,
    as modern news pages carry (a framework's page state, related-story data)."""
    title, paragraphs = ARTICLES[i % len(ARTICLES)]
    items = [{"id": n, "headline": paragraphs[n % len(paragraphs)][:80]} for n in range(400)]
    blob = "<script type='application/json'>" + repr(items).replace("'", '"') + "</script>\n"
    page = article(i)
    return page.replace("</body>", blob * (size // len(blob) + 1) + "</body>", 1)


# --- files cut short, as a crawl delivers them -------------------------------------------


def cut_file(path: Path, size: int) -> bytes:
    """Keep only the first `size` bytes of `path` (a download cut off); return them."""
    data = Path(path).read_bytes()[:size]
    Path(path).write_bytes(data)
    return data


def inflated_prefix(data: bytes) -> bytes:
    """What a gzip stream cut off anywhere inflates to before the cut (zlib, not gzip.open,
    which refuses a stream without its end)."""
    return zlib.decompressobj(31).decompress(data)
