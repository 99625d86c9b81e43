"""report: the run's own artifacts -> `report.html`, one self-contained page of every step.

Corpus stage, the last. A learner opens one file (no network: the pictures are inline
SVG, the styles inline CSS, no script) and follows a page from the crawl to the
next-token distribution. Each section is computed here, as plain numbers and strings,
from the artifacts of the run (and written as `report.json`, so every number on the
page can be checked against the artifact it came from); tasks/report_page.py draws them.

1. crawl: WARCs, responses and bytes downloaded, and the funnel: per step (URL filter,
   extraction, language, quality, dedup) what it kept and the count of every reason it
   dropped the rest for, per WARC and in total (corpus.duckdb's `funnel` table).
2. cleaning: for `pages` kept documents (the first of distinct hosts in corpus order),
   the raw HTML as it sits in the WARC (read at its offset from records.parquet) beside
   the text the model reads, and the pieces of visible page text that extraction and
   cleaning dropped (navigation, menus, footers); `dropped_per_reason` dropped pages per
   reason with the rule that dropped them (URLs from records.parquet, texts from the
   `dropped_samples` table); the largest near-duplicate cluster.
3. tokens: a paragraph as tokens with their ids; its size and the corpus's in bits,
   bytes and tokens (the corpus's tokens read from the shard headers: one
   `<|endoftext|>` per document plus the text's); bytes per token per language (the
   first `language_chars` characters of each language's kept documents, encoded); the
   vocabulary size and its longest tokens.
4. training: the model's size and shape, the context window, the batch, the loss and
   learning-rate curves, tokens/s (metrics.duckdb), and the first window of the first
   batch with its targets (the same tokens shifted by one).
5. inference: for each prompt, the first `steps` generation steps exactly as the
   evaluate stage samples them (same seed, temperature, top-k, top-p; model.generate's
   `trace`): the model's distribution over the next token (top `top`, the rest summed),
   the token drawn and its probability before and after temperature/top-k/top-p; the
   final sample (eval.json's: the generator draws the same numbers in the same order
   however many tokens are asked for, so the steps are that sample's first tokens); and
   the same prompt's first distribution and sample from the network before training
   (GPT initialised with the train config's seed, as training starts).

The page also shows training's tokens/s and seconds (metrics.duckdb), which differ
between two runs of the same inputs: report.json leaves them out, so it is the same bytes
for the same inputs, and the manifest's fingerprint is a digest of what it holds.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from prefect import task
from tokenizers import Tokenizer

from fineflow.config import EvaluateConfig, ReportConfig, TrainConfig
from fineflow.model import GPT, next_token_probs
from fineflow.progress import tell
from fineflow.storage import catalog
from fineflow.storage.artifacts import ArtifactWriter, Manifest, stage_key
from fineflow.storage.fingerprint import fingerprint
from fineflow.storage.shards import read_shard
from fineflow.tasks.dedup import CORPUS_DB
from fineflow.tasks.evaluate import load_model
from fineflow.tasks.extract import decode_html
from fineflow.tasks.report_page import render_page
from fineflow.tasks.tokenizer import EOT, TOKENIZER_JSON, hf_encoder, load_tokenizer, token_bytes
from fineflow.tasks.warc import read_at
from fineflow.training.data import WindowSampler, shard_paths
from fineflow.training.loop import lr_at
from fineflow.training.runtime import pick_device

STAGE_VERSION = 1
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
HTML_EXCERPT = 3000  # characters of raw HTML shown per page, from <body>
TEXT_EXCERPT = 1500  # characters of main text shown beside it
DROPPED_PIECES = 40  # removed pieces of visible text listed per page
SAMPLE_CHARS = 300  # characters of a dropped or duplicate page shown
WINDOW_SHOWN = 12  # positions of the training window drawn
LONGEST_TOKENS = 12
CURVE_POINTS = 400  # the learning-rate curve is drawn from at most this many steps
TIMINGS = "speed"  # the key of the timings the page shows and report.json leaves out

log = logging.getLogger("fineflow.report")

# One line per drop reason (or reason prefix): the rule, in words, and the setting.
RULES: dict[str, str] = {
    "blocklist_domain": "the host is on the UT1 blocklist (url_filter.blocklist)",
    "blocklist_url": "the URL is on the UT1 blocklist (url_filter.blocklist)",
    "banned_word": "a banned word is a token of the URL (url_filter.banned_words)",
    "soft_banned_words": "too many soft-banned words in the URL (url_filter.soft_banned_words)",
    "banned_subword": "a banned word inside the URL (url_filter.banned_subwords)",
    "not_html": "the response is not an HTML page",
    "status_": "the server did not answer 200 OK",
    "empty": "trafilatura found no main text on the page",
    "too_short": "the main text is shorter than extract.min_chars",
    "undecodable": "the bytes do not decode as text",
    "too_large": "the page is bigger than extract.max_html_bytes",
    "timeout": "extraction took longer than extract.timeout_s",
    "language_other": "fastText says it is not in filter.language.languages",
    "language_low_score": "fastText is less sure of the language than filter.language.min_score",
    "gopher_rep_dup_line_": "Gopher: too many duplicated lines",
    "gopher_rep_dup_para_": "Gopher: too many duplicated paragraphs",
    "gopher_rep_top_": "Gopher: the most frequent n-gram covers too much of the text",
    "gopher_rep_dup_": "Gopher: repeated n-grams cover too much of the text",
    "gopher_quality_few_words": "Gopher: fewer words than filter.gopher_quality.min_words",
    "gopher_quality_many_words": "Gopher: more words than filter.gopher_quality.max_words",
    "gopher_quality_short_words": "Gopher: the mean word is too short",
    "gopher_quality_long_words": "Gopher: the mean word is too long",
    "gopher_quality_symbol_ratio": "Gopher: too many '#' or ellipses per word",
    "gopher_quality_bullet_lines": "Gopher: too many lines start with a bullet",
    "gopher_quality_ellipsis_lines": "Gopher: too many lines end in an ellipsis",
    "gopher_quality_non_alpha_words": "Gopher: under 80% of the words have a letter (code, tables)",
    "gopher_quality_stop_words": "Gopher: fewer than 2 English stop words (the, of, and, ...)",
    "c4_lorem_ipsum": "C4: placeholder text (lorem ipsum)",
    "c4_curly_bracket": "C4: a curly bracket, the mark of code",
    "c4_too_few_sentences": "C4: fewer than 5 sentences once short lines are removed",
    "fineweb_empty": "FineWeb: no line left once C4's line rules are applied",
    "fineweb_line_punct_ratio": "FineWeb: too few lines end in . ! or ?",
    "fineweb_short_line_ratio": "FineWeb: too many short lines",
    "fineweb_char_dup_ratio": "FineWeb: too many characters in duplicated lines",
    "fineweb_list_ratio": "FineWeb: too many newlines per word (a list)",
    "duplicate": "a near-duplicate (MinHash) of a page seen earlier",
}

# The funnel's steps: (name, stage, which of its counts are drops).
FUNNEL_STEPS = (
    ("URL filter", "url_filter", ("dropped_",)),
    ("extraction", "extract", ("dropped_", "skipped_")),
    ("language", "filter", ("dropped_language_",)),
    ("quality", "filter", ("dropped_",)),
    ("dedup", "dedup", ("dropped_",)),
)


def rule_of(reason: str) -> str:
    """The rule behind a drop reason, in words (the longest matching entry of RULES)."""
    reason = reason.removeprefix("dropped_").removeprefix("skipped_")
    hits = [k for k in RULES if reason == k or (k.endswith("_") and reason.startswith(k))]
    return RULES[max(hits, key=len)] if hits else reason.replace("_", " ")


# --- 1. the crawl ---------------------------------------------------------------------------


def funnel_counts(db: Path) -> dict[str, dict[str, dict[str, int]]]:
    """corpus.duckdb's funnel table: warc -> stage -> metric -> value."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    with catalog.connect(db, read_only=True) as con:
        rows = con.execute("SELECT warc, stage, metric, value FROM funnel").fetchall()
    for warc, stage, metric, value in rows:
        out.setdefault(warc, {}).setdefault(stage, {})[metric] = int(value)
    return out


def funnel_steps(counts: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """One WARC's (or the total's) funnel: responses, then each step's kept and drops.

    A step's drops are its counts named by FUNNEL_STEPS (the language step takes the
    filter's language reasons, the quality step the rest); `other` is what the counts do
    not explain (0 when every record is accounted for)."""
    before = counts.get("url_filter", {}).get("total", 0)
    steps: list[dict[str, Any]] = [{"name": "responses", "kept": before, "dropped": {}}]
    for name, stage, prefixes in FUNNEL_STEPS:
        c = counts.get(stage, {})
        kept = c.get("kept_language" if name == "language" else "kept", 0)
        dropped = {
            k.split("_", 1)[1]: v
            for k, v in sorted(c.items())
            if v and k.startswith(prefixes) and not (name == "quality" and "_language_" in k)
        }
        steps.append(
            {
                "name": name,
                "kept": kept,
                "dropped": dropped,
                "other": before - kept - sum(dropped.values()),
            }
        )
        before = kept
    return steps


def crawl_section(downloads: list[Manifest], db: Path) -> dict[str, Any]:
    """WARCs, responses, bytes, and the funnel per WARC and in total."""
    per_warc = funnel_counts(db)
    total: dict[str, dict[str, int]] = {}
    for stages in per_warc.values():
        for stage, metrics in stages.items():
            for metric, value in metrics.items():
                s = total.setdefault(stage, {})
                s[metric] = s.get(metric, 0) + value
    sizes = {m.warc: m.counts.get("bytes", 0) for m in downloads}
    warcs = [
        {"warc": w, "bytes": sizes.get(w, 0), "steps": funnel_steps(per_warc[w])}
        for w in sorted(per_warc)
    ]
    funnel = funnel_steps(total)
    return {
        "warcs": len(downloads),
        "bytes": sum(sizes.values()),
        "responses": total.get("url_filter", {}).get("total", 0),
        "funnel": funnel,
        "per_warc": warcs,
        "rules": {r: rule_of(r) for step in funnel for r in step["dropped"]},
    }


# --- 2. cleaning ----------------------------------------------------------------------------


def visible_text(html: str) -> list[str]:
    """The pieces of text a browser shows (script, style, head left out), whitespace folded."""
    from lxml import etree
    from lxml import html as lxml_html

    try:
        tree = lxml_html.document_fromstring(html)
    except (etree.ParserError, ValueError):
        return []
    etree.strip_elements(tree, "script", "style", "noscript", "template", "head", with_tail=False)
    etree.strip_tags(tree, etree.Comment)
    pieces = (" ".join(t.split()) for t in tree.itertext())
    return [p for p in pieces if p]


def html_excerpt(html: str, chars: int = HTML_EXCERPT) -> tuple[str, int]:
    """(up to `chars` of the HTML from its <body>, where that excerpt starts)."""
    found = re.search(r"<body\b", html, re.IGNORECASE)
    start = found.start() if found else 0
    return html[start : start + chars], start


def page_view(html: str, payload_bytes: int, text: str) -> dict[str, Any]:
    """One page: its HTML (excerpt), the text the model reads, and what was thrown away."""
    pieces = visible_text(html)
    folded = " ".join(text.split())
    removed = [p for p in pieces if p not in folded]
    excerpt, start = html_excerpt(html)
    return {
        "html_bytes": payload_bytes,
        "html_chars": len(html),
        "html_excerpt": excerpt,
        "html_excerpt_start": start,
        "visible_pieces": len(pieces),
        "visible_chars": sum(len(p) for p in pieces),
        "removed_pieces": len(removed),
        "removed_chars": sum(len(p) for p in removed),
        "removed": removed[:DROPPED_PIECES],
        "text_chars": len(text),
        "text": text[:TEXT_EXCERPT],
    }


def pages_shown(db: Path, n: int) -> list[dict[str, Any]]:
    """The first `n` kept documents of distinct hosts, in corpus order."""
    with catalog.connect(db, read_only=True) as con:
        rows = con.execute(
            "SELECT id, url, host, warc, text FROM documents WHERE keep "
            "QUALIFY row_number() OVER (PARTITION BY host ORDER BY ordinal) = 1 "
            "ORDER BY ordinal LIMIT ?",
            [n],
        ).fetchall()
    return [dict(zip(("id", "url", "host", "warc", "text"), r, strict=True)) for r in rows]


def raw_page(root: Path, download: Manifest, records: Manifest, doc_id: str) -> tuple[str, int]:
    """(the decoded HTML, its size in bytes) of a document's response record in its WARC."""
    rows = pq.read_table(
        records.path(root, "records.parquet"),
        columns=["id", "offset"],
        filters=[("id", "=", doc_id)],
    ).to_pylist()
    if not rows:
        raise ValueError(f"{doc_id}: not in the records of {records.warc}")
    for rec in read_at(download.path(root, download.warc or ""), rows[0]["offset"]):
        if rec.record_id == doc_id and rec.payload is not None:
            html, _ = decode_html(rec.payload, rec.charset)
            if html is not None:
                return html, len(rec.payload)
    raise ValueError(f"{doc_id}: no readable response at offset {rows[0]['offset']}")


def url_drops(root: Path, records: list[Manifest], per_reason: int) -> list[dict[str, Any]]:
    """Up to `per_reason` URLs per url_filter drop reason, in WARC order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for m in records:
        table = pq.read_table(
            m.path(root, "records.parquet"), columns=["url", "reason", "keep"]
        ).to_pylist()
        for row in table:
            if row["keep"] or not row["reason"]:
                continue
            shown = out.setdefault(row["reason"], [])
            if len(shown) < per_reason:
                shown.append({"warc": m.warc, "url": row["url"], "text": ""})
    return [
        {"stage": "url_filter", "reason": r, "rule": rule_of(r), **page}
        for r in sorted(out)
        for page in out[r]
    ]


def text_drops(db: Path, per_reason: int) -> list[dict[str, Any]]:
    """Up to `per_reason` documents per filter drop reason (corpus.duckdb's samples)."""
    with catalog.connect(db, read_only=True) as con:
        rows = con.execute(
            "SELECT stage, reason, warc, url, text FROM dropped_samples "
            "QUALIFY row_number() OVER (PARTITION BY reason ORDER BY warc, id) <= ? "
            "ORDER BY reason, warc, id",
            [per_reason],
        ).fetchall()
    return [
        {"stage": s, "reason": r, "rule": rule_of(r), "warc": w, "url": u, "text": t[:SAMPLE_CHARS]}
        for s, r, w, u, t in rows
    ]


def duplicate_cluster(db: Path) -> dict[str, Any] | None:
    """The largest near-duplicate cluster: its documents, the kept one first."""
    with catalog.connect(db, read_only=True) as con:
        top = con.execute(
            "SELECT cluster_id, cluster_size FROM documents WHERE cluster_size > 1 "
            "ORDER BY cluster_size DESC, cluster_id LIMIT 1"
        ).fetchone()
        if top is None:
            return None
        rows = con.execute(
            "SELECT url, warc, keep, text FROM documents WHERE cluster_id = ? "
            "ORDER BY keep DESC, ordinal",
            [top[0]],
        ).fetchall()
    members = [
        {"url": u, "warc": w, "keep": bool(k), "text": t[:SAMPLE_CHARS]} for u, w, k, t in rows
    ]
    return {"size": int(top[1]), "members": members}


def cleaning_section(
    root: Path,
    downloads: list[Manifest],
    records: list[Manifest],
    db: Path,
    cfg: ReportConfig,
) -> dict[str, Any]:
    """Real pages before and after cleaning, dropped pages per reason, a duplicate cluster."""
    by_warc = {m.warc: m for m in downloads}
    records_of = {m.warc: m for m in records}
    pages = []
    for doc in pages_shown(db, cfg.pages):
        html, size = raw_page(root, by_warc[doc["warc"]], records_of[doc["warc"]], doc["id"])
        view = page_view(html, size, doc["text"])
        pages.append({k: doc[k] for k in ("id", "url", "warc")} | view)
    dropped = url_drops(root, records, cfg.dropped_per_reason) + text_drops(
        db, cfg.dropped_per_reason
    )
    return {"pages": pages, "dropped": dropped, "cluster": duplicate_cluster(db)}


# --- 3. tokens ------------------------------------------------------------------------------


def piece_text(piece: bytes | None, token_id: int, tokenizer: Tokenizer) -> str:
    """A token as text: its bytes decoded (a partial UTF-8 character as its hex bytes)."""
    if piece is None:
        return tokenizer.id_to_token(token_id) or f"<{token_id}>"
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"\\x{b:02x}" for b in piece)


def sample_paragraph(texts: list[str], lo: int = 200, hi: int = 700) -> str:
    """The first line of `lo`..`hi` characters in `texts`, else the first 400 characters."""
    for text in texts:
        for line in text.splitlines():
            if lo <= len(line.strip()) <= hi:
                return line.strip()
    return texts[0][:400] if texts else ""


def sizes(n_bytes: int, n_tokens: int) -> dict[str, float | int]:
    return {
        "bits": 8 * n_bytes,
        "bytes": n_bytes,
        "tokens": n_tokens,
        "bytes_per_token": round(n_bytes / n_tokens, 4) if n_tokens else 0.0,
    }


def language_rates(
    root: Path, filtered: list[Manifest], db: Path, tokenizer: Tokenizer, cap: int
) -> list[dict[str, Any]]:
    """Per language of the kept documents: docs, bytes, and bytes per token measured on
    its first `cap` characters (filter's docs.parquet says each document's language)."""
    files = [str(p) for m in filtered for p in m.paths(root, "docs.parquet")]
    encode = hf_encoder(tokenizer)
    lang = (
        "WITH lang AS (SELECT d.text, d.ordinal, d.length, coalesce(f.language, 'unknown') "
        "AS language FROM documents d LEFT JOIN (SELECT id, language FROM "
        "read_parquet($files)) f USING (id) WHERE d.keep) "
    )
    with catalog.connect(db, read_only=True) as con:
        totals = con.execute(
            lang + "SELECT language, count(*), sum(strlen(text)) FROM lang GROUP BY 1 "
            "ORDER BY 3 DESC, 1",
            {"files": files},
        ).fetchall()
        out = []
        for language, docs, n_bytes in totals:
            texts = [
                t
                for (t,) in con.execute(
                    lang + "SELECT text FROM (SELECT text, ordinal, sum(length) OVER "
                    "(ORDER BY ordinal) - length AS before FROM lang WHERE language = $language) "
                    "WHERE before < $cap ORDER BY ordinal",
                    {"files": files, "language": language, "cap": cap},
                ).fetchall()
            ]
            measured = sum(len(t.encode()) for t in texts)
            tokens = sum(len(ids) for ids in encode(texts))
            out.append(
                {
                    "language": language,
                    "docs": int(docs),
                    "bytes": int(n_bytes),
                    "measured_docs": len(texts),
                    "measured_bytes": measured,
                    "measured_tokens": tokens,
                    "bytes_per_token": round(measured / tokens, 4) if tokens else 0.0,
                }
            )
    return out


def tokens_section(
    root: Path,
    db: Path,
    filtered: list[Manifest],
    tokenizer: Manifest,
    shards: Manifest,
    paragraph_from: list[str],
    cfg: ReportConfig,
) -> dict[str, Any]:
    """A paragraph as tokens, the corpus in bits/bytes/tokens, per language, the vocabulary."""
    tok = load_tokenizer(tokenizer.path(root, TOKENIZER_JSON))
    pieces = token_bytes(tok)
    paragraph = sample_paragraph(paragraph_from)
    ids = hf_encoder(tok)([paragraph])[0]
    with catalog.connect(db, read_only=True) as con:
        docs, n_bytes = con.execute(
            "SELECT count(*), coalesce(sum(strlen(text)), 0) FROM documents WHERE keep"
        ).fetchone()
    split = {
        s: sum(len(read_shard(p)) for p in shard_paths(root, shards, s)) for s in ("train", "val")
    }
    tokens = split["train"] + split["val"]
    by_length = sorted(
        (i for i, p in enumerate(pieces) if p is not None), key=lambda i: (-len(pieces[i]), i)
    )
    return {
        "paragraph": {
            "text": paragraph,
            "pieces": [[i, piece_text(pieces[i], i, tok)] for i in ids],
            **sizes(len(paragraph.encode()), len(ids)),
        },
        "corpus": {
            **sizes(int(n_bytes), tokens - int(docs)),
            "docs": int(docs),
            "eot_tokens": int(docs),
            "shard_tokens": tokens,
            "train_tokens": split["train"],
            "val_tokens": split["val"],
        },
        "languages": language_rates(root, filtered, db, tok, cfg.language_chars),
        "vocab_size": tok.get_vocab_size(),
        "byte_tokens": 256,
        "longest": [[i, piece_text(pieces[i], i, tok)] for i in by_length[:LONGEST_TOKENS]],
    }


# --- 4. training ----------------------------------------------------------------------------


def training_section(root: Path, shards: Manifest, train: Manifest, tok: Tokenizer) -> dict:
    """The model, the batch, the curves, and one window of the first batch with its targets."""
    from fineflow.tasks.train import METRICS_DB

    spec = json.loads(train.path(root, "config.json").read_text())
    tcfg = TrainConfig.model_validate(spec["train"])
    model_spec = spec["model"]
    metrics = json.loads(train.path(root, "metrics.json").read_text())
    with catalog.connect(train.path(root, METRICS_DB), read_only=True) as con:
        run = con.execute("SELECT tokens_per_step, grad_accum, world, device FROM run").fetchone()
        speed = con.execute(
            "SELECT median(tokens_per_s), max(elapsed_s) FROM train_log WHERE step > 1"
        ).fetchone()
    every = max(1, tcfg.steps // CURVE_POINTS)
    lr_steps = sorted({*range(0, tcfg.steps, every), tcfg.steps - 1})
    block = int(model_spec["block_size"])
    train_shards = [read_shard(p) for p in shard_paths(root, shards, "train")]
    window = WindowSampler(train_shards, block, tcfg.batch_size, tcfg.seed).batch(0, 0)[0].tolist()
    pieces = token_bytes(tok)
    shown = [[i, piece_text(pieces[i], i, tok)] for i in window[: WINDOW_SHOWN + 1]]
    vocab = int(model_spec["vocab_size"])
    multiple = int(model_spec.get("vocab_multiple", 1))
    return {
        "params": int(train.stats["params"]),
        "n_layer": model_spec["n_layer"],
        "n_head": model_spec["n_head"],
        "n_embd": model_spec["n_embd"],
        "block_size": block,
        "vocab_size": vocab,
        "padded_vocab": -(-vocab // multiple) * multiple,
        "batch_size": tcfg.batch_size,
        "grad_accum": int(run[1]),
        "world": int(run[2]),
        "tokens_per_step": int(run[0]),
        "steps": int(train.counts["steps"]),
        "tokens_seen": int(train.counts["tokens_seen"]),
        "device": run[3],
        "loss": {"step": metrics["step"], "train_loss": metrics["train_loss"]},
        "val_loss": metrics.get("val_loss"),
        "uniform_loss": round(math.log(vocab), 6),
        "lr": {"step": [s + 1 for s in lr_steps], "lr": [lr_at(s, tcfg) for s in lr_steps]},
        "schedule": tcfg.schedule,
        "window": {"tokens": shown, "length": block + 1},
        TIMINGS: {
            "tokens_per_s": round(float(speed[0] or 0.0), 1),
            "seconds": round(float(speed[1] or 0.0), 1),
        },
    }


# --- 5. inference ---------------------------------------------------------------------------


def distribution(logits: torch.Tensor, top: int) -> dict[str, Any]:
    """The model's own next-token distribution (temperature 1): top ids and probabilities,
    the rest summed, and its entropy in bits."""
    probs = logits.double().softmax(dim=-1)
    ordered, order = probs.sort(descending=True)
    entropy = float(-(probs * probs.clamp_min(1e-300).log2()).sum())
    return {
        "top": [[int(i), float(p)] for i, p in zip(order[:top], ordered[:top], strict=True)],
        "rest": float(ordered[top:].sum()),
        "entropy_bits": round(entropy, 4),
    }


def sampling_probs(logits: torch.Tensor, cfg: EvaluateConfig) -> torch.Tensor:
    """The distribution the sampler draws from at cfg's temperature, top-k and top-p."""
    if cfg.temperature == 0:  # greedy: all the mass on the argmax
        return torch.nn.functional.one_hot(logits.argmax(), logits.numel()).double()
    return next_token_probs(logits[None], cfg.temperature, cfg.top_k, cfg.top_p)[0].double()


def generation_steps(
    model: GPT,
    tok: Tokenizer,
    prompt_ids: list[int],
    ecfg: EvaluateConfig,
    shown: int,
    new_tokens: int,
    device: torch.device,
    top: int,
) -> tuple[list[dict[str, Any]], str]:
    """Sample `new_tokens` tokens as the evaluate stage does (tasks.evaluate.sample_texts:
    `<|endoftext|>` first, its seed, temperature, top-k and top-p, on its device), keeping
    each step's logits: (the first `shown` steps with their `top` tokens, the text up to
    the first end of text).
    The generator draws the same numbers in the same order whatever `new_tokens` is, so
    these are the first tokens of the evaluate stage's sample."""
    pieces = token_bytes(tok)
    eot_id = tok.token_to_id(EOT)
    idx = torch.tensor([[eot_id, *prompt_ids]], device=device)
    trace: list[torch.Tensor] = []
    out = model.generate(
        idx,
        new_tokens,
        temperature=ecfg.temperature,
        top_k=ecfg.top_k,
        top_p=ecfg.top_p,
        generator=torch.Generator(device=device).manual_seed(ecfg.seed),
        trace=trace,
    )
    new = out[0, idx.size(1) :].tolist()
    ended = new.index(eot_id) if eot_id in new else len(new)
    steps = []
    for i, step_logits in enumerate(trace[: min(shown, ended + 1)]):
        logits = step_logits[0].float().cpu()
        dist = distribution(logits, top)
        chosen = new[i]
        dist["top"] = [[t, p, piece_text(pieces[t], t, tok)] for t, p in dist["top"]]
        steps.append(
            {
                "context": tok.decode(prompt_ids + new[:i]),
                **dist,
                "sampled": chosen,
                "sampled_text": piece_text(pieces[chosen], chosen, tok),
                "sampled_p": float(logits.double().softmax(-1)[chosen]),
                "sampled_q": float(sampling_probs(logits, ecfg)[chosen]),
            }
        )
    return steps, tok.decode(prompt_ids + new[:ended])


def untrained_model(spec: dict[str, Any], seed: int) -> GPT:
    """The network training started from: GPT built right after seeding, as training does."""
    torch.manual_seed(seed)
    return GPT.from_spec(spec).eval()


def prompt_steps(
    prompt: str,
    trained: GPT,
    before: GPT,
    tok: Tokenizer,
    sample: str | None,
    ecfg: EvaluateConfig,
    rcfg: ReportConfig,
    device: torch.device,
) -> dict[str, Any]:
    """One prompt: its first steps after training, and its first step and sample before."""
    ids = hf_encoder(tok)([prompt])[0]
    shown = min(rcfg.steps, ecfg.max_new_tokens)
    steps, text = generation_steps(trained, tok, ids, ecfg, shown, shown, device, rcfg.top)
    first, before_text = generation_steps(
        before, tok, ids, ecfg, 1, ecfg.max_new_tokens, device, rcfg.top
    )
    return {
        "prompt": prompt,
        "prompt_tokens": len(ids),
        "steps": steps,
        "sample": text if sample is None else sample,
        "before": first[0] if first else None,
        "before_sample": before_text,
    }


def inference_section(
    root: Path,
    train: Manifest,
    evaluation: Manifest,
    tok: Tokenizer,
    ecfg: EvaluateConfig,
    rcfg: ReportConfig,
) -> dict[str, Any]:
    """Per prompt: the first generation steps after training and the sample the evaluate
    stage drew (eval.json); the first step before training and that network's sample."""
    device = pick_device("auto")  # the evaluate stage's: the same generator, the same draws
    spec = json.loads(train.path(root, "config.json").read_text())
    trained = load_model(root, train, device)
    seed = TrainConfig.model_validate(spec["train"]).seed
    before = untrained_model(spec["model"], seed).to(device)
    samples = json.loads(evaluation.path(root, "eval.json").read_text())["samples"]
    sampled = {s["prompt"]: s["text"] for s in samples}
    threads = torch.get_num_threads()
    # one token at a time through a small model: one thread is faster than several
    # (5-10x on a busy 2-core box), and the same on every machine, so the same digits
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            prompts = [
                prompt_steps(p, trained, before, tok, sampled.get(p), ecfg, rcfg, device)
                for p in ecfg.prompts
            ]
    finally:
        torch.set_num_threads(threads)
    return {
        "settings": {
            "max_new_tokens": ecfg.max_new_tokens,
            "temperature": ecfg.temperature,
            "top_k": ecfg.top_k,
            "top_p": ecfg.top_p,
            "seed": ecfg.seed,
        },
        "prompts": prompts,
    }


# --- the whole report -----------------------------------------------------------------------


def build_report(
    root: Path,
    downloads: list[Manifest],
    records: list[Manifest],
    filtered: list[Manifest],
    corpus: Manifest,
    tokenizer: Manifest,
    shards: Manifest,
    model: Manifest,
    evaluation: Manifest,
    ecfg: EvaluateConfig,
    rcfg: ReportConfig,
) -> dict[str, Any]:
    """Every section's numbers (module docstring), as report.json holds them."""
    db = corpus.path(root, CORPUS_DB)
    tok = load_tokenizer(tokenizer.path(root, TOKENIZER_JSON))
    cleaning = cleaning_section(root, downloads, records, db, rcfg)
    texts = [p["text"] for p in cleaning["pages"]]
    return {
        "crawl": crawl_section(downloads, db),
        "cleaning": cleaning,
        "tokens": tokens_section(root, db, filtered, tokenizer, shards, texts, rcfg),
        "training": training_section(root, shards, model, tok),
        "inference": inference_section(root, model, evaluation, tok, ecfg, rcfg),
        "evaluation": {
            k: evaluation.stats[k] for k in ("val_loss", "bits_per_byte") if k in evaluation.stats
        },
    }


def without_timings(report: Any) -> Any:
    """`report` without its TIMINGS entries: what the manifest's fingerprint digests."""
    if isinstance(report, dict):
        return {k: without_timings(v) for k, v in report.items() if k != TIMINGS}
    if isinstance(report, list):
        return [without_timings(v) for v in report]
    return report


@task(name="report", task_run_name="report")
def report_run(
    root: str,
    downloads: list[Manifest],
    records: list[Manifest],
    filtered: list[Manifest],
    corpus: Manifest,
    tokenizer: Manifest,
    shards: Manifest,
    model: Manifest,
    evaluation: Manifest,
    ecfg: EvaluateConfig,
    cfg: ReportConfig,
) -> Manifest:
    """One self-contained HTML page of the run, step by step, and the numbers it shows."""
    key = stage_key(
        STAGE_VERSION, downloads, records, filtered, corpus, tokenizer, shards, model,
        evaluation, ecfg, cfg,
    )  # fmt: skip
    base = Path(root)
    report = build_report(
        base, downloads, records, filtered, corpus, tokenizer, shards, model, evaluation, ecfg, cfg
    )
    page = render_page(report)
    with ArtifactWriter(base, "report", key) as out:
        numbers = without_timings(report)
        out.path(REPORT_JSON).write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
        out.path(REPORT_HTML).write_text(page)
        manifest = out.commit(
            cfg,
            counts={
                "pages": len(report["cleaning"]["pages"]),
                "prompts": len(report["inference"]["prompts"]),
            },
            content=fingerprint(numbers),  # the page's bytes hold timings: not its identity
        )
    tell(f"report: {base / manifest.dir / REPORT_HTML} ({len(page.encode()) / 1e3:,.0f} kB)", log)
    return manifest
