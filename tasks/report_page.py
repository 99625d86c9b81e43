"""The run report as one self-contained HTML page: report.json's sections -> HTML.

Pure functions, no I/O: the charts are inline SVG drawn here (bars, lines, the funnel,
the training window), the styles one inline <style>; no script, no font, no image is
fetched, so the file opens offline and the same numbers give the same bytes. Every
section is a `<section id="...">` with its pictures inside (tests read them by id):
crawl, cleaning, tokens, training, inference. Hovering a bar or a point shows its
numbers (SVG <title>).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

SECTIONS = ("crawl", "cleaning", "tokens", "training", "inference")
PALETTE = ("#fde68a", "#bfdbfe", "#bbf7d0", "#fecaca", "#ddd6fe", "#fed7aa", "#a5f3fc")
KEPT, DROPPED, ACCENT, MUTED = "#16a34a", "#ef4444", "#2563eb", "#9ca3af"

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#111827;
 background:#f9fafb}
main{max-width:1400px;margin:0 auto;padding:16px 32px 64px}
header{border-bottom:1px solid #e5e7eb;margin-bottom:8px}
nav a{margin-right:16px;color:#2563eb;text-decoration:none}
section.step{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:8px 24px 20px;
 margin:20px 0}
h1{font-size:26px;margin:12px 0 4px}h2{font-size:21px;margin:12px 0 4px}
h3{font-size:16px;margin:18px 0 6px}
p.lead{color:#4b5563;margin:2px 0 12px;max-width:1000px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.card{border:1px solid #e5e7eb;border-radius:6px;padding:6px 12px;min-width:120px}
.card b{display:block;font-size:19px}.card span{color:#6b7280;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border-bottom:1px solid #e5e7eb;padding:3px 8px;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:16px}
pre{white-space:pre-wrap;word-break:break-word;font:12px/1.45 ui-monospace,Menlo,monospace;
 background:#f3f4f6;border-radius:6px;padding:8px;margin:4px 0;max-height:420px;overflow:auto}
pre.html .tag{color:#9ca3af}pre.html .txt{color:#111827;font-weight:600}
pre.main{background:#ecfdf5}
.gone{display:inline-block;background:#fee2e2;color:#991b1b;text-decoration:line-through;
 border-radius:4px;padding:0 5px;margin:2px;font-size:12px}
.toks{line-height:2.6;font:14px/2.6 ui-monospace,Menlo,monospace}
.tok{display:inline-flex;flex-direction:column;align-items:center;border-radius:4px;
 margin:1px;padding:0 2px;white-space:pre;vertical-align:top;line-height:1.35}
.tok i{font-style:normal;font-size:9px;color:#4b5563}
.kept{color:#166534;font-weight:600}.drop{color:#991b1b;font-weight:600}
.sample{font:13px/1.5 ui-monospace,Menlo,monospace;background:#eff6ff;border-radius:6px;
 padding:6px 10px;white-space:pre-wrap}
.sample.before{background:#f3f4f6;color:#6b7280}
.ctx{font:12px ui-monospace,Menlo,monospace;color:#374151;margin:10px 0 2px}
.steps{display:grid;grid-template-columns:repeat(3,1fr);gap:4px 16px}
.ctx b{background:#dbeafe}
svg text{font:12px system-ui,sans-serif;fill:#374151}
svg .small{font-size:10px}
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _num(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:,.2f} MB"


def _pct(p: float) -> str:
    """A probability as a percentage: one decimal from 1%, two significant digits below."""
    return f"{100 * p:.1f}%" if p >= 0.01 else f"{100 * p:.2g}%"


def shown_token(text: str) -> str:
    """A token for a label: spaces as ␣, newlines as ↵, tabs as →, quoted."""
    return "“" + text.replace(" ", "␣").replace("\n", "↵").replace("\t", "→") + "”"


# --- SVG pictures -------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str  # printed after the bar
    title: str = ""  # hover text
    color: str = ACCENT
    bold: bool = False


def bars(
    rows: Sequence[Bar],
    width: int = 560,
    label_w: int = 150,
    row_h: int = 22,
    scale: float | None = None,
) -> str:
    """Horizontal bars, one per row, scaled to the largest value (or to `scale`: a longer
    bar is cut at the full width and drawn dashed)."""
    top = scale or max((r.value for r in rows), default=0) or 1.0
    area = width - label_w - 110
    out = [f'<svg class="bars" width="{width}" height="{row_h * len(rows) + 4}" role="img">']
    for i, r in enumerate(rows):
        y = i * row_h + 2
        w = max(1.0, area * min(r.value, top) / top) if r.value > 0 else 0
        cut = ' stroke="#374151" stroke-dasharray="3 3"' if r.value > top else ""
        weight = ' font-weight="700"' if r.bold else ""
        out.append(
            f"<g><title>{_e(r.title or r.text)}</title>"
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end"{weight}>'
            f"{_e(r.label[:28])}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
            f'fill="{r.color}" rx="2"{cut}/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 15}"{weight}>{_e(r.text)}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def lines(
    series: Sequence[tuple[str, Sequence[float], Sequence[float], str]],
    hlines: Sequence[tuple[str, float, str]] = (),
    width: int = 640,
    height: int = 280,
    x_label: str = "step",
    y_label: str = "",
    y_digits: int = 2,
    points: bool = True,
) -> str:
    """Line chart: series of (name, xs, ys, colour), dashed horizontal lines, a legend."""
    xs = [x for _, sx, _, _ in series for x in sx]
    ys = [y for _, _, sy, _ in series for y in sy] + [v for _, v, _ in hlines]
    if not xs or not ys:
        return '<svg class="lines" width="10" height="10" role="img"></svg>'
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if y1 == y0:
        y1 = y0 + 1
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = 64, 16, 12, 40
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (pw * (x - x0) / (x1 - x0) if x1 > x0 else pw / 2)

    def py(y: float) -> float:
        return top + ph * (1 - (y - y0) / (y1 - y0))

    out = [f'<svg class="lines" width="{width}" height="{height}" role="img">']
    out.append(
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#e5e7eb"/>'
    )
    for t in _ticks(y0 + pad, y1 - pad):
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" '
            f'stroke="#f3f4f6"/><text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end" '
            f'class="small">{t:.{y_digits}f}</text>'
        )
    for t in _ticks(x0, x1):
        out.append(
            f'<text x="{px(t):.1f}" y="{top + ph + 16}" text-anchor="middle" class="small">'
            f"{t:,.0f}</text>"
        )
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{_e(x_label)}</text>'
        f'<text x="14" y="{top + ph / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + ph / 2})">{_e(y_label)}</text>'
    )
    legend = []
    for name, value, color in hlines:
        out.append(
            f"<g><title>{_e(name)}: {value:.4f}</title>"
            f'<line x1="{left}" x2="{left + pw}" y1="{py(value):.1f}" y2="{py(value):.1f}" '
            f'stroke="{color}" stroke-dasharray="5 4" stroke-width="1.5"/></g>'
        )
        legend.append((name, color, True))
    for name, sx, sy, color in series:
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(sx, sy, strict=True))
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        if points:
            out += [
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}">'
                f"<title>{_e(name)}: step {x:,.0f}, {y:.4g}</title></circle>"
                for x, y in zip(sx, sy, strict=True)
            ]
        legend.append((name, color, False))
    for i, (name, color, dashed) in enumerate(legend):
        y = top + 30 + 16 * i
        dash = ' stroke-dasharray="5 4"' if dashed else ""
        out.append(
            f'<line x1="{left + pw - 230}" x2="{left + pw - 206}" y1="{y - 4}" y2="{y - 4}" '
            f'stroke="{color}" stroke-width="2"{dash}/>'
            f'<text x="{left + pw - 200}" y="{y}" class="small">{_e(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def funnel_svg(
    steps: list[dict[str, Any]], per_warc: list[dict[str, Any]], width: int = 1100
) -> str:
    """Each step's kept records (green) and dropped ones (red, by reason on hover), with
    per-WARC counts on hover."""
    total = steps[0]["kept"] or 1
    label_w, row_h, area = 120, 46, width - 120 - 380
    by_warc = {
        w["warc"]: {s["name"]: s for s in w["steps"]} for w in per_warc
    }  # warc -> step -> counts
    out = [f'<svg class="funnel" width="{width}" height="{row_h * len(steps) + 8}" role="img">']
    before = total
    for i, step in enumerate(steps):
        y = 4 + i * row_h
        kept = step["kept"]
        gone = before - kept if i else 0
        wk, wd = area * kept / total, area * gone / total
        reasons = sorted(step.get("dropped", {}).items(), key=lambda kv: (-kv[1], kv[0]))
        hover = [f"{step['name']}: {kept:,} kept" + (f", {gone:,} dropped" if i else "")]
        hover += [f"  {r}: {n:,}" for r, n in reasons]
        hover += [
            f"{w}: {s[step['name']]['kept']:,}"
            for w, s in sorted(by_warc.items())
            if step["name"] in s
        ]
        text = ", ".join(f"{r.replace('_', ' ')} {n:,}" for r, n in reasons[:4])
        if len(reasons) > 4:
            text += f", +{len(reasons) - 4} more"
        out.append(
            f"<g><title>{_e(chr(10).join(hover))}</title>"
            f'<text x="{label_w - 8}" y="{y + 18}" text-anchor="end" font-weight="700">'
            f"{_e(step['name'])}</text>"
            f'<rect x="{label_w}" y="{y + 4}" width="{max(wk, 1):.1f}" height="20" '
            f'fill="{KEPT}" rx="2"/>'
            f'<rect x="{label_w + wk:.1f}" y="{y + 4}" width="{wd:.1f}" height="20" '
            f'fill="{DROPPED}" opacity="0.55" rx="2"/>'
            f'<text x="{label_w + wk + wd + 8:.1f}" y="{y + 18}">{kept:,} kept'
            + (f" ({100 * kept / total:.1f}%)" if i else "")
            + (f', <tspan fill="#991b1b">{gone:,} dropped</tspan>' if gone else "")
            + "</text>"
            + (f'<text x="{label_w}" y="{y + 40}" class="small">{_e(text)}</text>' if text else "")
            + "</g>"
        )
        before = kept
    out.append("</svg>")
    return "".join(out)


def window_svg(tokens: list[list[Any]], length: int) -> str:
    """One training window: the inputs on top, the targets (the same tokens moved one
    place left) below, an arrow from each target to where it came from."""
    n = len(tokens) - 1
    box, gap, left = 84, 6, 90
    width = left + n * (box + gap) + 110
    out = [f'<svg class="window" width="{width}" height="150" role="img">']
    out.append(
        '<text x="4" y="38" font-weight="700">input</text>'
        '<text x="4" y="118" font-weight="700">target</text>'
    )
    for i in range(n):
        x = left + i * (box + gap)
        for row, (tid, text) in ((0, tokens[i]), (1, tokens[i + 1])):
            y = 18 + row * 80
            label = shown_token(text)
            label = label if len(label) <= 11 else label[:10] + "…"
            out.append(
                f"<g><title>position {i}: id {tid} {_e(shown_token(text))}</title>"
                f'<rect x="{x}" y="{y}" width="{box}" height="36" rx="4" '
                f'fill="{PALETTE[(i + row) % len(PALETTE)]}"/>'
                f'<text x="{x + box / 2}" y="{y + 16}" text-anchor="middle">{_e(label)}</text>'
                f'<text x="{x + box / 2}" y="{y + 30}" text-anchor="middle" class="small">'
                f"{tid}</text></g>"
            )
        if i + 1 < n:
            nx = left + (i + 1) * (box + gap)
            out.append(
                f'<line x1="{nx + box / 2}" y1="56" x2="{x + box / 2}" y2="96" '
                f'stroke="{MUTED}" stroke-width="1.2" marker-end="url(#arrow)"/>'
            )
    out.append(
        f'<text x="{left + n * (box + gap)}" y="40" class="small">… {length} tokens</text>'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" '
        f'markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{MUTED}"/>'
        "</marker></defs></svg>"
    )
    return "".join(out)


def distribution_svg(step: dict[str, Any], vocab: int, width: int = 440) -> str:
    """A next-token distribution: the top tokens, the rest summed (its bar cut to the
    scale of the top ones); the drawn token marked, added below the top when not in it."""
    rows = []
    for tid, p, text in step["top"]:
        drawn = tid == step.get("sampled")
        rows.append(
            Bar(
                shown_token(text),
                p,
                _pct(p) + ("  ← drawn" if drawn else ""),
                f"id {tid} {shown_token(text)}: p = {p:.5f}",
                color=KEPT if drawn else ACCENT,
                bold=drawn,
            )
        )
    rest, others = step["rest"], vocab - len(step["top"])
    if step.get("sampled") is not None and all(t != step["sampled"] for t, _, _ in step["top"]):
        p = step["sampled_p"]
        rows.append(
            Bar(
                shown_token(step["sampled_text"]),
                p,
                _pct(p) + "  ← drawn",
                f"id {step['sampled']}: p = {p:.5f}",
                color=KEPT,
                bold=True,
            )
        )
        rest, others = rest - p, others - 1
    scale = max(r.value for r in rows)
    rows.append(
        Bar(
            f"the other {others:,}",
            rest,
            _pct(rest) + (" (bar cut)" if rest > scale else ""),
            f"{others:,} other tokens together: p = {rest:.5f}",
            color=MUTED,
        )
    )
    return bars(rows, width=width, label_w=130, scale=scale)


# --- the sections -------------------------------------------------------------------------


def _cards(items: Sequence[tuple[str, str]]) -> str:
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in items)
        + "</div>"
    )


def _table(head: Sequence[str], rows: Sequence[Sequence[object]], numeric: set[int]) -> str:
    th = "".join(
        f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
        for i, h in enumerate(head)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def crawl_html(c: dict[str, Any]) -> str:
    steps = c["funnel"]
    names = [s["name"] for s in steps[1:]]
    rows = [
        [w["warc"], f"{w['bytes'] / 1e6:.2f}", *[_num(s["kept"]) for s in w["steps"]]]
        for w in c["per_warc"]
    ]
    rows.append(
        [f"total ({len(rows)} WARCs)", f"{c['bytes'] / 1e6:.2f}", *[_num(s["kept"]) for s in steps]]
    )
    rules = c.get("rules", {})
    reasons = [
        [s["name"], r.replace("_", " "), rules.get(r, ""), _num(n)]
        for s in steps[1:]
        for r, n in sorted(s["dropped"].items(), key=lambda kv: -kv[1])
    ]
    return (
        '<section class="step" id="crawl"><h2>1. The crawl</h2>'
        '<p class="lead">Common Crawl stores the web as WARC files: every HTTP response a '
        "crawler got, headers and bytes. Each step below keeps some pages and says why the "
        "others went. Hover a bar for the reasons and the counts per WARC.</p>"
        + _cards(
            [
                ("WARC files", _num(c["warcs"])),
                ("HTTP responses", _num(c["responses"])),
                ("downloaded", _mb(c["bytes"])),
                ("pages kept for training", _num(steps[-1]["kept"])),
            ]
        )
        + funnel_svg(steps, c["per_warc"])
        + "<h3>Per WARC: pages left after each step</h3>"
        + _table(["WARC", "MB", "responses", *names], rows, set(range(1, len(names) + 3)))
        + "<h3>Every reason a page was dropped</h3>"
        + _table(["step", "reason", "the rule", "pages"], reasons, {3})
        + "</section>"
    )


def _markup(html: str) -> str:
    """HTML source as text: tags grey, the text between them dark."""
    import re

    out = []
    for part in re.split(r"(<!--.*?-->|<[^>]*>)", html, flags=re.DOTALL):
        if not part:
            continue
        if part.startswith("<"):
            out.append(f'<span class="tag">{_e(part)}</span>')
        elif part.strip():
            out.append(f'<span class="txt">{_e(part)}</span>')
        else:
            out.append(_e(part))
    return "".join(out)


def cleaning_html(c: dict[str, Any]) -> str:
    parts = [
        '<section class="step" id="cleaning"><h2>2. Cleaning, on real pages</h2>'
        '<p class="lead">Left: the page as it arrived, HTML markup and all (from its '
        "&lt;body&gt;, cut short). Right: the text the model is trained on. Red: the pieces "
        "of text a browser would show that are not in it: what extraction and the filters "
        "threw away (menus, navigation, footers, and whatever they judged not main text)."
        "</p>"
    ]
    for page in c["pages"]:
        kept = page["text_chars"]
        share = [
            Bar("HTML", page["html_chars"], f"{page['html_bytes']:,} bytes", color=MUTED),
            Bar("visible text", page["visible_chars"], f"{page['visible_chars']:,} chars"),
            Bar("main text kept", kept, f"{kept:,} chars", color=KEPT, bold=True),
        ]
        gone = "".join(f'<span class="gone">{_e(p)}</span>' for p in page["removed"])
        more = page["removed_pieces"] - len(page["removed"])
        parts.append(
            f'<h3><a href="{_e(page["url"])}">{_e(page["url"])}</a></h3>'
            + bars(share, width=620)
            + '<div class="cols"><div><b>raw HTML</b> (characters '
            f"{page['html_excerpt_start']:,} to "
            f"{page['html_excerpt_start'] + len(page['html_excerpt']):,} of "
            f"{page['html_chars']:,})"
            f'<pre class="html">{_markup(page["html_excerpt"])}</pre></div>'
            f"<div><b>main text</b> ({kept:,} characters"
            + (", first 1,500" if kept > len(page["text"]) else "")
            + f')<pre class="main">{_e(page["text"])}</pre></div></div>'
            f"<p><b>thrown away</b>: {page['removed_pieces']:,} of "
            f"{page['visible_pieces']:,} pieces of visible text</p>"
            + gone
            + (f" <i>and {more:,} more</i>" if more > 0 else "")
        )
    if c["dropped"]:
        rows = [
            [d["stage"], d["reason"].replace("_", " "), d["rule"], d["url"], d["text"]]
            for d in c["dropped"]
        ]
        parts.append(
            "<h3>Dropped pages, one per reason, and the rule that dropped them</h3>"
            + _table(["stage", "reason", "rule", "URL", "text (start)"], rows, set())
        )
    if c["cluster"]:
        rows = [
            ["kept" if m["keep"] else "dropped", m["url"], m["text"]]
            for m in c["cluster"]["members"]
        ]
        parts.append(
            f"<h3>A near-duplicate cluster ({c['cluster']['size']} pages, one kept)</h3>"
            + _table(["", "URL", "text (start)"], rows, set())
        )
    parts.append("</section>")
    return "".join(parts)


def _tokens(tokens: Sequence[Sequence[Any]]) -> str:
    out = []
    for n, (tid, text) in enumerate(tokens):
        shown = text.replace("\n", "↵")
        out.append(
            f'<span class="tok" style="background:{PALETTE[n % len(PALETTE)]}" '
            f'title="id {tid}">{_e(shown)}<i>{tid}</i></span>'
        )
    return f'<div class="toks">{"".join(out)}</div>'


def tokens_html(t: dict[str, Any]) -> str:
    p, c = t["paragraph"], t["corpus"]
    size_rows = [
        [
            what,
            _num(s["bits"]),
            _num(s["bytes"]),
            _num(s["tokens"]),
            f"{s['bytes_per_token']:.2f}",
            f"{s['bits'] / s['tokens']:.1f}" if s["tokens"] else "",
        ]
        for what, s in (("this paragraph", p), ("the corpus (kept documents)", c))
    ]
    langs = [
        Bar(
            lang["language"],
            lang["bytes_per_token"],
            f"{lang['bytes_per_token']:.2f} bytes/token",
            f"{lang['language']}: {lang['docs']:,} docs, {lang['measured_bytes']:,} bytes "
            f"measured -> {lang['measured_tokens']:,} tokens",
        )
        for lang in t["languages"]
    ]
    longest = ", ".join(shown_token(s) for _, s in t["longest"])
    return (
        '<section class="step" id="tokens"><h2>3. Tokens</h2>'
        '<p class="lead">The model never sees letters: a byte-level BPE tokenizer, trained on '
        "this corpus, cuts the text into pieces from its vocabulary and the model sees their "
        "ids. Common words become one token; rare ones are spelled with several.</p>"
        + _tokens(p["pieces"])
        + "<h3>The same text as bits, bytes and tokens</h3>"
        + _table(
            ["", "bits", "bytes (UTF-8)", "tokens", "bytes per token", "bits per token"],
            size_rows,
            {1, 2, 3, 4, 5},
        )
        + f"<p>The corpus's tokens are the shards' ({c['train_tokens']:,} train + "
        f"{c['val_tokens']:,} val = {c['shard_tokens']:,}), less one &lt;|endoftext|&gt; "
        f"before each of the {c['docs']:,} documents.</p>"
        + "<h3>Bytes per token, per language</h3>"
        + bars(langs, width=620)
        + _cards(
            [
                ("vocabulary (ids)", _num(t["vocab_size"])),
                ("of which single bytes", _num(t["byte_tokens"])),
                ("learnt merges", _num(t["vocab_size"] - t["byte_tokens"] - 1)),
            ]
        )
        + f"<p><b>Its longest tokens</b>: {_e(longest)}</p></section>"
    )


def training_html(t: dict[str, Any]) -> str:
    loss = t["loss"]
    val = [("val loss", t["val_loss"], "#f97316")] if t.get("val_loss") is not None else []
    uniform = [("uniform guess: ln(vocab)", t["uniform_loss"], MUTED)]
    speed = t.get("speed", {})
    return (
        '<section class="step" id="training"><h2>4. Training</h2>'
        '<p class="lead">Training shows the network windows of consecutive tokens and asks it, '
        "at every position, for the next one; the loss (cross-entropy, in nats) says how "
        "surprised it was. It starts at about ln(vocabulary), a uniform guess.</p>"
        + _cards(
            [
                ("parameters", _num(t["params"])),
                ("layers x width", f"{t['n_layer']} x {t['n_embd']}"),
                ("attention heads", str(t["n_head"])),
                ("context window", f"{t['block_size']:,} tokens"),
                ("batch", f"{t['batch_size'] * t['grad_accum'] * t['world']} windows"),
                ("tokens per step", _num(t["tokens_per_step"])),
                ("steps", _num(t["steps"])),
                ("tokens seen", _num(t["tokens_seen"])),
                ("tokens / s", _num(speed.get("tokens_per_s", 0))),
                ("training time", f"{speed.get('seconds', 0):,.0f} s on {t['device']}"),
            ]
        )
        + '<div class="cols"><div><h3>Loss</h3>'
        + lines(
            [("train loss", loss["step"], loss["train_loss"], ACCENT)],
            val + uniform,
            y_label="nats / token",
        )
        + "</div><div><h3>Learning rate</h3>"
        + lines(
            [("learning rate", t["lr"]["step"], t["lr"]["lr"], "#7c3aed")],
            y_label=f"lr ({t['schedule']})",
            y_digits=4,
            points=False,
        )
        + "</div></div>"
        + "<h3>One window of the first batch, and its targets</h3>"
        f"<p>A batch is {t['batch_size']} such windows of {t['block_size']} tokens; the "
        "target at each position is the token that follows it, so one window teaches "
        f"{t['block_size']} predictions at once.</p>"
        + window_svg(t["window"]["tokens"], t["window"]["length"] - 1)
        + "</section>"
    )


def inference_html(inf: dict[str, Any], vocab: int) -> str:
    s = inf["settings"]
    parts = [
        '<section class="step" id="inference"><h2>5. Inference</h2>'
        '<p class="lead">To write, the model gives a probability to every token of its '
        "vocabulary, one token is drawn, appended, and it goes again. The bars are the "
        f"model's own probabilities; the token is drawn at temperature {s['temperature']}, "
        f"top-k {s['top_k'] or 'off'}, top-p {s['top_p'] or 'off'} (seed {s['seed']}), which "
        "sharpens them.</p>"
    ]
    for pr in inf["prompts"]:
        parts.append(f"<h3>“{_e(pr['prompt'])}”</h3>")
        if pr["before"] is not None and pr["steps"]:
            b, a = pr["before"], pr["steps"][0]
            parts.append(
                '<div class="cols"><div><b>before training</b> (the random network; entropy '
                f"{b['entropy_bits']:.1f} bits)"
                + distribution_svg(b, vocab)
                + f"</div><div><b>after training</b> (entropy {a['entropy_bits']:.1f} bits)"
                + distribution_svg(a, vocab)
                + "</div></div>"
            )
        parts.append('<div class="steps">')
        for i, st in enumerate(pr["steps"]):
            ctx = st["context"][-60:].replace("\n", "↵")
            drawn = st["sampled_text"].replace("\n", "↵")
            parts.append(
                f'<div><p class="ctx">step {i + 1}: …{_e(ctx)}<b>{_e(drawn)}</b><br>'
                f"drew id {st['sampled']}: p = {st['sampled_p']:.3f} under the model, "
                f"{st['sampled_q']:.3f} after temperature/top-k/top-p</p>"
                + distribution_svg(st, vocab)
                + "</div>"
            )
        parts.append("</div>")
        parts.append(
            f"<p><b>the sample</b> ({s['max_new_tokens']} new tokens at most)</p>"
            f'<div class="sample">{_e(pr["sample"])}</div>'
            "<p><b>the same prompt, same seed, before training</b></p>"
            f'<div class="sample before">{_e(pr["before_sample"])}</div>'
        )
    parts.append("</section>")
    return "".join(parts)


def render_page(report: dict[str, Any]) -> str:
    """The whole report (report.json's dict) as one HTML document."""
    ev = report.get("evaluation", {})
    vocab = report["tokens"]["vocab_size"]
    summary = (
        f"{report['crawl']['warcs']} WARCs, {report['crawl']['responses']:,} pages -> "
        f"{report['crawl']['funnel'][-1]['kept']:,} documents -> "
        f"{report['tokens']['corpus']['shard_tokens']:,} tokens -> a "
        f"{report['training']['params']:,}-parameter GPT"
        + (
            f" -> val loss {ev['val_loss']:.3f}, {ev['bits_per_byte']:.3f} bits per byte"
            if "val_loss" in ev and "bits_per_byte" in ev
            else ""
        )
    )
    nav = "".join(f'<a href="#{s}">{i}. {s}</a>' for i, s in enumerate(SECTIONS, 1))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>fineflow run report</title><style>{CSS}</style></head><body><main>"
        f"<header><h1>How this model was made</h1><p>{_e(summary)}</p><nav>{nav}</nav></header>"
        + crawl_html(report["crawl"])
        + cleaning_html(report["cleaning"])
        + tokens_html(report["tokens"])
        + training_html(report["training"])
        + inference_html(report["inference"], vocab)
        + "</main></body></html>\n"
    )
