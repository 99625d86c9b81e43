#!/usr/bin/env python3
"""Build the bundled sample of real web pages as Common-Crawl-style WARC files.

The sample in ``fineflow/sample/`` is made from real HTML written by third parties and
shipped in two Debian doc packages whose licenses allow redistribution:

* ``python3.11-doc``  -> the Python 3.11 documentation (PSF License Agreement;
  code in it is also under the Zero-Clause BSD license), served here under
  ``https://docs.python.org/3.11/...``
* ``sqlite3-doc``     -> the SQLite documentation (public domain), served
  under ``https://www.sqlite.org/...``

What the script writes (everything under ``--out``, default ``fineflow/sample/`` next to
this script's ``scripts/`` folder):

* ``warcs/CC-MAIN-20240301000000-20240301010000-0000N.warc.gz`` (N = 0..4):
  WARC/1.0, one gzip member per record, a ``warcinfo`` record first, then for
  every capture a ``request``, a ``response`` (full HTTP/1.1 header block)
  and a ``metadata`` record, in the order Common Crawl writes them.
* ``blocklist/domains``: the bundled default URL blocklist (UT1 format).
* ``manifest.tsv``: one line per capture saying what it is (page, exact or near
  duplicate, blocklisted host, non-HTML, non-200) and where it came from.
* ``LICENSES/``: the Debian copyright files of both packages and the upstream
  license pages of both doc sets (license.html, copyright.html).

Deliberately included, so every stage of the pipeline has something to do:
exact and near duplicates under mirror hosts (same WARC and across WARCs;
near duplicates get a changed header/footer/version line plus one inserted
sentence in the main text, so they stay near-duplicates after extraction),
pages on blocklisted hosts, non-HTML payloads (text/plain, image/png,
image/gif) and non-200 responses (404, 301).

Output is deterministic: record ids, dates, IPs and everything else derive
from a hash of the URL (and the file name), and the gzip members are written
by zlib with mtime 0, so rebuilding from the same package versions gives
byte-identical files.

Usage (the exact command used for the committed sample)::

    apt-get update
    .venv/bin/python scripts/build_sample.py --fetch

``--fetch`` runs ``apt-get download python3.11-doc sqlite3-doc`` (the pinned
versions in PACKAGES when the archive still has them) and ``dpkg -x`` into a
temporary directory, then builds from there. Without ``--fetch`` the doc trees
are read from ``--python-docs`` (default ``/usr/share/doc/python3.11/html``,
where ``apt-get install python3.11-doc`` puts them) and ``--sqlite-docs``
(default ``/usr/share/doc/sqlite3``, from ``apt-get install sqlite3-doc``), or
from any directory where the .debs were unpacked with ``dpkg -x``.

``--verify`` reads the WARCs back with warcio and prints a summary table.

Only the standard library and ``warcio`` are needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gzip
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
import zlib
from html.parser import HTMLParser
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

# --------------------------------------------------------------------------
# Fixed parameters of the sample
# --------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "fineflow" / "sample"
DEFAULT_PYTHON_DOCS = Path("/usr/share/doc/python3.11/html")
DEFAULT_SQLITE_DOCS = Path("/usr/share/doc/sqlite3")

# Debian package -> version the committed sample was built from (bookworm).
# --fetch asks for exactly these first and falls back to the archive's current
# version (with a warning: the output then may differ from the committed one).
PACKAGES = {
    "python3.11-doc": "3.11.2-6+deb12u9",
    "sqlite3-doc": "3.40.1-2+deb12u2",
}
# where each package puts its docs and its copyright file, relative to the
# root that dpkg -x unpacked into
PKG_DOCS = {
    "python3.11-doc": "usr/share/doc/python3.11/html",
    "sqlite3-doc": "usr/share/doc/sqlite3",
}
PKG_COPYRIGHT = {
    "python3.11-doc": "usr/share/doc/python3.11-doc/copyright",
    "sqlite3-doc": "usr/share/doc/sqlite3-doc/copyright",
}

N_FILES = 5
CRAWL_START = dt.datetime(2024, 3, 1, 0, 0, 0, tzinfo=dt.UTC)
SEGMENT_SECONDS = 3600  # 20240301000000 .. 20240301010000
FILE_NAME = "CC-MAIN-20240301000000-20240301010000-{:05d}.warc.gz"
MAX_TOTAL_BYTES = 8 * 1024 * 1024

# page selection: prose-heavy pages only
MAX_RAW_BYTES = 200_000  # skip pages bigger than this ...
MAX_GZ_BYTES = 36_000  # ... or compressing to more than this
MIN_TEXT_CHARS = 1_500  # visible text (outside script/style)
MIN_TEXT_CHARS_DUP = 3_000  # pages picked as originals of (near-)duplicates

N_DUP_EXACT = 22
N_DUP_NEAR = 20
N_BLOCKED = 8

PY_BASE = "https://docs.python.org/3.11/"
PY_ALIAS_BASE = "https://docs.python.org/3/"  # real alias of the same pages
SQ_BASE = "https://www.sqlite.org/"
PY_MIRROR = "https://python-docs-mirror.example.org/3.11/"
SQ_MIRROR = "https://sqlite-docs-mirror.example.org/"

PY_EXCLUDE_NAMES = {
    "index.html",
    "contents.html",
    "search.html",
    "py-modindex.html",
    "download.html",
    "copyright.html",
    "about.html",
    "license.html",
}
PY_EXCLUDE_DIRS = {"_static", "_sources", "_images", "_downloads", "includes"}
SQ_EXCLUDE_NAMES = {
    "index.html",
    "docs.html",
    "doclist.html",
    "keyword_index.html",
    "sitemap.html",
    "toc.html",
    "changes.html",
    "chronology.html",
    "news.html",
    "lang.html",
    "funclist.html",
    "objlist.html",
    "constlist.html",
    "copyright.html",
    "search.html",
    "download.html",
    "sqlite.html",
}
SQ_SUBDIRS = ("", "c3ref", "session")  # releaselog/ and syntax/ are left out

# UT1-style blocklist: made-up adult/gambling-looking names under the reserved
# .example TLD (RFC 2606), so none of them can ever be a real site.
BLOCKED_DOMAINS = [
    # adult
    "xxx-videos.example",
    "hot-webcams.example",
    "adult-hub.example",
    "nsfw-gallery.example",
    "escort-finder.example",
    "xxx-tube-free.example",
    "dating-singles-18.example",
    # gambling
    "casino-bonus.example",
    "free-spins-casino.example",
    "poker-royale.example",
    "sportsbet-odds.example",
    "jackpot-slots.example",
    "roulette-live.example",
    "lotto-winners.example",
    "crypto-dice.example",
]
# hosts the blocked captures are served under (a few with a subdomain of a
# listed domain, so subdomain matching is exercised as well)
BLOCKED_HOSTS = [
    "casino-bonus.example",
    "xxx-videos.example",
    "www.poker-royale.example",
    "jackpot-slots.example",
    "m.hot-webcams.example",
    "adult-hub.example",
    "www.sportsbet-odds.example",
    "nsfw-gallery.example",
]

# non-HTML payloads taken from the packages: (package, relative path, URL,
# content type, file index)
NON_HTML = [
    (
        "python",
        "_sources/library/json.rst.txt",
        PY_BASE + "_sources/library/json.rst.txt",
        "text/plain; charset=utf-8",
        0,
    ),
    ("python", "_images/logging_flow.png", PY_BASE + "_images/logging_flow.png", "image/png", 1),
    ("sqlite", "robots.txt", SQ_BASE + "robots.txt", "text/plain; charset=utf-8", 2),
    (
        "python",
        "_sources/tutorial/classes.rst.txt",
        PY_BASE + "_sources/tutorial/classes.rst.txt",
        "text/plain; charset=utf-8",
        3,
    ),
    ("sqlite", "images/fts3_doclist2.png", SQ_BASE + "images/fts3_doclist2.png", "image/png", 4),
    (
        "sqlite",
        "images/sqlite370_banner.gif",
        SQ_BASE + "images/sqlite370_banner.gif",
        "image/gif",
        2,
    ),
]

# non-200 responses: (URL, status line, extra headers, body, file index)
NGINX_404 = (
    b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
    b"<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
NON_200 = [
    (PY_BASE + "library/asynchat-howto.html", "404 Not Found", [], NGINX_404, 1),
    (
        "http://sqlite.org/lang_select.html",
        "301 Moved Permanently",
        [("Location", SQ_BASE + "lang_select.html")],
        b"<html><head><title>301 Moved Permanently</title></head>\n<body>\n"
        b"<h1>Moved Permanently</h1>\n<p>The document has moved "
        b'<a href="https://www.sqlite.org/lang_select.html">here</a>.</p>\n'
        b"</body></html>\n",
        3,
    ),
    (
        SQ_BASE + "lang_upsert_old.html",
        "404 Not Found",
        [],
        b"<html><head><title>Not Found</title></head>\n<body>\n"
        b"<h1>Document Not Found</h1>\nThe document /lang_upsert_old.html is not "
        b"available on this server\n</body></html>\n",
        4,
    ),
]

SERVERS = {  # host -> (Server header, IP from the documentation ranges)
    "docs.python.org": "nginx",
    "www.sqlite.org": "althttpd.c",
    "sqlite.org": "althttpd.c",
    "python-docs-mirror.example.org": "Apache/2.4.57 (Debian)",
    "sqlite-docs-mirror.example.org": "Apache/2.4.57 (Debian)",
}
TEST_NETS = ("192.0.2.", "198.51.100.", "203.0.113.")  # RFC 5737
USER_AGENT = "fineflow-sample/1.0 (synthetic capture built from Debian doc packages)"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def h(*parts: str) -> bytes:
    return hashlib.sha256("|".join(parts).encode("utf-8")).digest()


def hint(*parts: str) -> int:
    return int.from_bytes(h(*parts)[:8], "big")


def record_id(*parts: str) -> str:
    return "<urn:uuid:{}>".format(uuid.UUID(bytes=h("record-id", *parts)[:16], version=4))


def warc_date(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def http_date(t: dt.datetime) -> str:
    return t.strftime("%a, %d %b %Y %H:%M:%S GMT")


def host_of(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def path_of(url: str) -> str:
    rest = url.split("://", 1)[1]
    return "/" + rest.split("/", 1)[1] if "/" in rest else "/"


class _TextLen(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.skip = 0
        self.n = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "svg"):
            self.skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style", "svg") and self.skip:
            self.skip -= 1

    def handle_data(self, data):
        if not self.skip:
            self.n += len(" ".join(data.split()))


def text_len(html: bytes) -> int:
    p = _TextLen()
    p.feed(html.decode("utf-8", "replace"))
    p.close()
    return p.n


# --------------------------------------------------------------------------
# selecting pages
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Capture:
    url: str
    kind: str  # page | dup-exact | dup-near | blocked | non-html | non-200
    payload: bytes
    content_type: str
    status: str = "200 OK"
    extra_headers: list = dataclasses.field(default_factory=list)
    source: str = ""  # package:relative/path
    dup_of: str = ""  # URL of the original for dups
    file_index: int = -1
    text_chars: int = 0


def main_part(data: bytes) -> bytes:
    """The main column of a Sphinx page (so sidebars don't count as text)."""
    i = data.find(b'role="main"')
    j = data.find(b'class="sphinxsidebar"', i + 1)
    return data[i:j] if i >= 0 and j > i else data


def page_ok(data: bytes) -> tuple[bool, int]:
    if len(data) > MAX_RAW_BYTES:
        return False, 0
    if len(zlib.compress(data, 6)) > MAX_GZ_BYTES:
        return False, 0
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False, 0
    n = text_len(main_part(data))
    return n >= MIN_TEXT_CHARS, n


def select_python(root: Path) -> list[Capture]:
    out = []
    for p in sorted(root.rglob("*.html")):
        rel = p.relative_to(root).as_posix()
        parts = rel.split("/")
        if parts[0] in PY_EXCLUDE_DIRS or parts[-1] in PY_EXCLUDE_NAMES:
            continue
        if parts[-1].startswith("genindex") or rel == "whatsnew/changelog.html":
            continue
        data = p.read_bytes()
        ok, n = page_ok(data)
        if ok:
            out.append(
                Capture(
                    PY_BASE + rel,
                    "page",
                    data,
                    "text/html; charset=utf-8",
                    source="python3.11-doc:" + rel,
                    text_chars=n,
                )
            )
    return out


def select_sqlite(root: Path) -> list[Capture]:
    out = []
    for sub in SQ_SUBDIRS:
        d = root / sub if sub else root
        for p in sorted(d.glob("*.html")):
            rel = p.relative_to(root).as_posix()
            if p.name in SQ_EXCLUDE_NAMES:
                continue
            data = p.read_bytes()
            ok, n = page_ok(data)
            if ok:
                out.append(
                    Capture(
                        SQ_BASE + rel,
                        "page",
                        data,
                        "text/html; charset=utf-8",
                        source="sqlite3-doc:" + rel,
                        text_chars=n,
                    )
                )
    return out


# near-duplicate edits: tiny changes a mirror would make
MIRROR_BANNER = (
    b'<div class="mirror-note">You are reading a mirror of %s, synced nightly. '
    b"Report problems to webmaster@%s.</div>\n"
)


MIRROR_SENTENCES = (
    b"Note: this copy was mirrored on 28 February 2024 and may lag behind the original. ",
    b"(Mirror copy, refreshed weekly; the upstream page may have changed since.) ",
    b"This page is part of an unofficial offline mirror of the documentation. ",
)


def near_dup(orig: Capture, mirror_url: str, variant: int) -> bytes:
    data = orig.payload
    is_py = orig.url.startswith(PY_BASE)
    upstream = b"docs.python.org" if is_py else b"www.sqlite.org"
    mirror_host = host_of(mirror_url).encode()
    new = data
    if variant == 0:  # changed version / date string
        if is_py:
            new = data.replace(b"Python 3.11.2 documentation", b"Python 3.11.3 documentation")
            new = re.sub(
                rb"Last updated on [A-Za-z]+ \d\d, \d{4}\.", b"Last updated on Feb 28, 2024.", new
            )
        else:
            new = re.sub(
                rb"(This page last modified on\s+<a [^>]*>)[^<]*(</a>)",
                rb"\g<1>2024-02-28 06:14:02\g<2>",
                data,
            )
    elif variant == 1:  # different footer line
        if is_py:
            new = re.sub(
                rb"(Last updated on [A-Za-z]+ \d\d, \d{4}\.)",
                rb"Mirrored from docs.python.org. \g<1>",
                data,
                count=1,
            )
        else:
            new = data.replace(
                b"Small. Fast. Reliable.<br>Choose any three.",
                b"Small. Fast. Reliable.<br>Mirrored for you.",
                1,
            )
    if new == data or variant == 2:  # banner after <body>
        new = re.sub(
            rb"(<body[^>]*>)",
            lambda m: m.group(1) + b"\n" + MIRROR_BANNER % (upstream, mirror_host),
            new,
            count=1,
        )
    assert new != data, orig.url
    # ... plus one sentence in the first paragraph of the main text, so the
    # extracted text differs a little too (boilerplate edits alone vanish in
    # text extraction and would make these exact duplicates at text level)
    start = new.find(b'role="main"') if is_py else 0
    m = re.compile(rb"<p(?: [^>]*)?>").search(new, max(start, 0))
    assert m, orig.url
    new = new[: m.end()] + MIRROR_SENTENCES[variant] + new[m.end() :]
    return new


def mirror_url(url: str) -> str:
    if url.startswith(PY_BASE):
        return PY_MIRROR + url[len(PY_BASE) :]
    return SQ_MIRROR + url[len(SQ_BASE) :]


def plan(py_root: Path, sq_root: Path) -> list[Capture]:
    pages = select_python(py_root) + select_sqlite(sq_root)
    # deterministic "random" order
    pages.sort(key=lambda c: h("order", c.url))

    # pages served under blocklisted hosts: taken out of the normal pool
    blocked = []
    for i, host in enumerate(BLOCKED_HOSTS):
        c = pages.pop(0)
        name = c.url.rsplit("/", 1)[1]
        blocked.append(
            Capture(
                f"https://{host}/guides/{name}",
                "blocked",
                c.payload,
                c.content_type,
                source=c.source,
                file_index=i % N_FILES,
                text_chars=c.text_chars,
            )
        )

    for i, c in enumerate(pages):
        c.file_index = i % N_FILES

    # (near-)duplicates of pages with enough text; half land in the same WARC
    # as their original, half in another one
    dup_pool = [c for c in pages if c.text_chars >= MIN_TEXT_CHARS_DUP]
    dup_pool.sort(key=lambda c: h("dup", c.url))
    dups = []
    for i in range(N_DUP_EXACT + N_DUP_NEAR):
        orig = dup_pool[i]
        exact = i < N_DUP_EXACT
        same_file = i % 2 == 0
        fi = (
            orig.file_index
            if same_file
            else (orig.file_index + 1 + hint("f", orig.url) % (N_FILES - 1)) % N_FILES
        )
        if exact and i % 7 == 3 and orig.url.startswith(PY_BASE):
            url = PY_ALIAS_BASE + orig.url[len(PY_BASE) :]  # docs.python.org/3/ alias
        else:
            url = mirror_url(orig.url)
        payload = orig.payload if exact else near_dup(orig, url, i % 3)
        dups.append(
            Capture(
                url,
                "dup-exact" if exact else "dup-near",
                payload,
                orig.content_type,
                source=orig.source,
                dup_of=orig.url,
                file_index=fi,
                text_chars=orig.text_chars,
            )
        )

    others = []
    roots = {"python": py_root, "sqlite": sq_root}
    pkgs = {"python": "python3.11-doc", "sqlite": "sqlite3-doc"}
    for which, rel, url, ctype, fi in NON_HTML:
        data = (roots[which] / rel).read_bytes()
        others.append(
            Capture(url, "non-html", data, ctype, source=pkgs[which] + ":" + rel, file_index=fi)
        )
    for url, status, extra, body, fi in NON_200:
        others.append(
            Capture(
                url,
                "non-200",
                body,
                "text/html; charset=utf-8",
                status=status,
                extra_headers=list(extra),
                file_index=fi,
            )
        )
    return pages + blocked + dups + others


# --------------------------------------------------------------------------
# writing WARCs
# --------------------------------------------------------------------------


def capture_time(c: Capture) -> dt.datetime:
    # spread over the segment, derived from the URL only
    return CRAWL_START + dt.timedelta(seconds=5 + hint("time", c.url) % (SEGMENT_SECONDS - 10))


def ip_of(host: str) -> str:
    return TEST_NETS[hint("net", host) % 3] + str(1 + hint("ip", host) % 254)


def write_warc(path: Path, captures: list[Capture]) -> None:
    fname = path.name
    info_id = record_id(fname, "warcinfo")
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True, warc_version="1.0")

    info = (
        b"isPartOf: FINEFLOW-SAMPLE-2024-10\r\n"
        b"publisher: fineflow (synthetic Common-Crawl-style sample)\r\n"
        b"description: Real HTML pages from the Debian packages python3.11-doc (PSF License) "
        b"and sqlite3-doc (public domain), written as if crawled; see sample/README.md\r\n"
        b"operator: fineflow scripts/build_sample.py\r\n"
        b"software: fineflow scripts/build_sample.py (warcio)\r\n"
        b"robots: not checked (no crawl took place)\r\n"
        b"format: WARC File Format 1.0\r\n"
        b"conformsTo: https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.0/\r\n"
    )
    writer.write_record(
        writer.create_warc_record(
            "",
            "warcinfo",
            payload=io.BytesIO(info),
            length=len(info),
            warc_headers_dict={
                "WARC-Type": "warcinfo",
                "WARC-Date": warc_date(CRAWL_START),
                "WARC-Record-ID": info_id,
                "Content-Length": "0",
                "Content-Type": "application/warc-fields",
                "WARC-Filename": fname,
            },
        )
    )

    for c in captures:
        t = capture_time(c)
        host, path_ = host_of(c.url), path_of(c.url)
        req_id = record_id(fname, "request", c.url)
        resp_id = record_id(fname, "response", c.url)
        meta_id = record_id(fname, "metadata", c.url)
        ip = ip_of(host)

        req_http = StatusAndHeaders(
            f"GET {path_} HTTP/1.1",
            [
                ("Host", host),
                ("User-Agent", USER_AGENT),
                ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                ("Accept-Language", "en-US,en;q=0.5"),
                ("Accept-Encoding", "br,gzip"),
                ("Connection", "Keep-Alive"),
            ],
            is_http_request=True,
        )
        writer.write_record(
            writer.create_warc_record(
                c.url,
                "request",
                payload=io.BytesIO(b""),
                length=0,
                http_headers=req_http,
                warc_headers_dict={
                    "WARC-Type": "request",
                    "WARC-Date": warc_date(t),
                    "WARC-Record-ID": req_id,
                    "Content-Length": "0",
                    "Content-Type": "application/http; msgtype=request",
                    "WARC-Warcinfo-ID": info_id,
                    "WARC-IP-Address": ip,
                    "WARC-Target-URI": c.url,
                },
            )
        )

        server = SERVERS.get(host, "nginx/1.22.1")
        modified = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
            seconds=hint("mtime", c.url) % (55 * 86400)
        )
        headers = [
            ("Date", http_date(t)),
            ("Server", server),
            ("Content-Type", c.content_type),
            ("Content-Length", str(len(c.payload))),
        ]
        if c.status.startswith("200"):
            headers += [
                ("Last-Modified", http_date(modified)),
                ("ETag", f'"{int(modified.timestamp()):x}-{len(c.payload):x}"'),
                ("Accept-Ranges", "bytes"),
            ]
        headers += c.extra_headers
        headers += [("Connection", "keep-alive")]
        resp_http = StatusAndHeaders(c.status, headers, protocol="HTTP/1.1")
        ident = c.content_type.split(";")[0]
        writer.write_record(
            writer.create_warc_record(
                c.url,
                "response",
                payload=io.BytesIO(c.payload),
                length=len(c.payload),
                http_headers=resp_http,
                warc_headers_dict={
                    "WARC-Type": "response",
                    "WARC-Date": warc_date(t),
                    "WARC-Record-ID": resp_id,
                    "Content-Length": "0",
                    "Content-Type": "application/http; msgtype=response",
                    "WARC-Warcinfo-ID": info_id,
                    "WARC-Concurrent-To": req_id,
                    "WARC-IP-Address": ip,
                    "WARC-Target-URI": c.url,
                    "WARC-Identified-Payload-Type": ident,
                },
            )
        )

        meta = f"fetchTimeMs: {40 + hint('fetch', c.url) % 900}\r\n"
        if c.content_type.startswith("text/"):
            meta += "charset-detected: UTF-8\r\n"
        meta_b = meta.encode("ascii")
        writer.write_record(
            writer.create_warc_record(
                c.url,
                "metadata",
                payload=io.BytesIO(meta_b),
                length=len(meta_b),
                warc_headers_dict={
                    "WARC-Type": "metadata",
                    "WARC-Date": warc_date(t),
                    "WARC-Record-ID": meta_id,
                    "Content-Length": "0",
                    "Content-Type": "application/warc-fields",
                    "WARC-Warcinfo-ID": info_id,
                    "WARC-Concurrent-To": resp_id,
                    "WARC-Target-URI": c.url,
                },
            )
        )

    path.write_bytes(buf.getvalue())


def write_blocklist(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# fineflow default URL blocklist (UT1 format: one domain per line;",
        "# a listed domain also blocks its subdomains). Lines starting with # are comments.",
        "# All names are made up under the reserved .example TLD (RFC 2606).",
        "# Generated by scripts/build_sample.py -- edit BLOCKED_DOMAINS there.",
        "",
        "# adult",
    ]
    lines += BLOCKED_DOMAINS[:7]
    lines += ["", "# gambling"]
    lines += BLOCKED_DOMAINS[7:]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_manifest(path: Path, files: list[tuple[str, list[Capture]]]) -> None:
    rows = ["file\tkind\tstatus\tcontent_type\turl\tdup_of\tsource\tpayload_sha1"]
    for fname, caps in files:
        for c in caps:
            rows.append(
                "\t".join(
                    [
                        fname,
                        c.kind,
                        c.status.split()[0],
                        c.content_type.split(";")[0],
                        c.url,
                        c.dup_of or "-",
                        c.source or "-",
                        hashlib.sha1(c.payload).hexdigest(),
                    ]
                )
            )
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def build(py_root: Path, sq_root: Path, out: Path) -> list[Path]:
    for r, what in ((py_root, "python docs"), (sq_root, "sqlite docs")):
        if not r.is_dir():
            sys.exit(
                f"error: {what} not found at {r} (install the package, pass the directory "
                "or use --fetch)"
            )
    captures = plan(py_root, sq_root)
    urls = [c.url for c in captures]
    assert len(urls) == len(set(urls)), "duplicate URL in plan"

    warc_dir = out / "warcs"
    warc_dir.mkdir(parents=True, exist_ok=True)
    for old in warc_dir.glob("CC-MAIN-*.warc.gz"):
        old.unlink()
    files = []
    paths = []
    for i in range(N_FILES):
        caps = [c for c in captures if c.file_index == i]
        caps.sort(key=lambda c: (capture_time(c), c.url))
        p = warc_dir / FILE_NAME.format(i)
        write_warc(p, caps)
        files.append((p.name, caps))
        paths.append(p)
    write_blocklist(out / "blocklist" / "domains")
    write_manifest(out / "manifest.tsv", files)
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} WARC files, {len(captures)} captures, {total / 1e6:.2f} MB")
    if total > MAX_TOTAL_BYTES:
        sys.exit(f"error: sample is {total} bytes, over the {MAX_TOTAL_BYTES} byte budget")
    return paths


# --------------------------------------------------------------------------
# fetching the packages, versions, licenses
# --------------------------------------------------------------------------


def fetch(tmp: Path) -> Path:
    debs = tmp / "debs"
    root = tmp / "root"
    debs.mkdir()
    root.mkdir()
    for pkg, ver in PACKAGES.items():
        r = subprocess.run(["apt-get", "download", f"{pkg}={ver}"], cwd=debs)
        if r.returncode != 0:
            print(
                f"warning: {pkg} {ver} is no longer in the archive; using the current version "
                "(the output may differ from the committed sample)",
                file=sys.stderr,
            )
            r = subprocess.run(["apt-get", "download", pkg], cwd=debs)
            if r.returncode != 0:
                sys.exit(f"error: apt-get download {pkg} failed (run 'apt-get update' first?)")
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def debian_version(doc_dir: Path, pkg: str) -> str:
    """Version from the package's changelog.Debian.gz, found beside the docs."""
    base = doc_dir.resolve()
    for _ in range(6):
        cl = base / pkg / "changelog.Debian.gz"
        if cl.is_file():
            with gzip.open(cl, "rt", encoding="utf-8") as fh:
                first = fh.readline()
            m = re.search(r"\(([^)]+)\)", first)
            return m.group(1) if m else "?"
        base = base.parent
    return "unknown"


def find_copyright(doc_dir: Path, pkg: str) -> Path | None:
    base = doc_dir.resolve()
    for _ in range(6):
        f = base / pkg / "copyright"
        if f.is_file():
            return f
        base = base.parent
    return None


def copy_licenses(py_root: Path, sq_root: Path, out: Path) -> None:
    lic = out / "LICENSES"
    for root, pkg in ((py_root, "python3.11-doc"), (sq_root, "sqlite3-doc")):
        src = find_copyright(root, pkg)
        if src is None:
            print(
                f"warning: no copyright file for {pkg} found; LICENSES/ not updated",
                file=sys.stderr,
            )
            continue
        lic.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, lic / (f"{pkg}.copyright"))
    # the upstream statements about the documentation itself
    for src, name in (
        (py_root / "license.html", "python3.11-doc.license.html"),
        (sq_root / "copyright.html", "sqlite3-doc.copyright.html"),
    ):
        if src.is_file():
            lic.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, lic / name)


# --------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------


def verify(paths: list[Path]) -> None:
    from warcio.archiveiterator import ArchiveIterator

    print(f"{'file':<55} {'bytes':>9} {'records':>8} {'responses':>10} {'html':>6}")
    tot = [0, 0, 0, 0]
    for p in paths:
        counts: dict[str, int] = {}
        html = 0
        with open(p, "rb") as fh:
            for rec in ArchiveIterator(fh):
                counts[rec.rec_type] = counts.get(rec.rec_type, 0) + 1
                if rec.rec_type == "response":
                    ct = rec.http_headers.get_header("Content-Type", "")
                    if rec.http_headers.get_statuscode() == "200" and ct.startswith("text/html"):
                        html += 1
                    rec.content_stream().read()
        n = sum(counts.values())
        size = p.stat().st_size
        kinds = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        n_resp = counts.get("response", 0)
        print(f"{p.name:<55} {size:>9} {n:>8} {n_resp:>10} {html:>6}   {kinds}")
        for i, v in enumerate((size, n, counts.get("response", 0), html)):
            tot[i] += v
    print(f"{'total':<55} {tot[0]:>9} {tot[1]:>8} {tot[2]:>10} {tot[3]:>6}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--python-docs",
        type=Path,
        default=DEFAULT_PYTHON_DOCS,
        help="the Python 3.11 HTML docs (default: %(default)s, from python3.11-doc)",
    )
    ap.add_argument(
        "--sqlite-docs",
        type=Path,
        default=DEFAULT_SQLITE_DOCS,
        help="the SQLite HTML docs (default: %(default)s, from sqlite3-doc)",
    )
    ap.add_argument(
        "--fetch",
        action="store_true",
        help="apt-get download + dpkg -x both packages into a temp dir and use those "
        "(needs 'apt-get update' once); overrides --python-docs/--sqlite-docs",
    )
    ap.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)"
    )
    ap.add_argument("--verify", action="store_true", help="read the WARCs back and print a summary")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fineflow-sample-") as tmp:
        py_root, sq_root = args.python_docs, args.sqlite_docs
        if args.fetch:
            root = fetch(Path(tmp))
            py_root = root / PKG_DOCS["python3.11-doc"]
            sq_root = root / PKG_DOCS["sqlite3-doc"]
        for root_, pkg in ((py_root, "python3.11-doc"), (sq_root, "sqlite3-doc")):
            ver = debian_version(root_, pkg)
            note = "" if ver == PACKAGES[pkg] else f"  (sample was built from {PACKAGES[pkg]})"
            print(f"{pkg} {ver} from {root_}{note}")
        paths = build(py_root, sq_root, args.out)
        copy_licenses(py_root, sq_root, args.out)
    if args.verify:
        verify(paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
