"""The ablation's yardstick: held-out documents, the leak check, a choice task, the scores.

Four corpus-level tasks of `fineflow ablate` (flows/ablate.py), each cached like a stage:

- eval_set (`hold_out`): the documents every model is scored on, `eval.parquet` (id,
  cluster_id, text). From the base corpus: its val split, the kept documents whose
  near-duplicate cluster hashes below eval.fraction (tasks/shard.py's split, which every
  variant shares, so no variant trains on them); or the documents of a JSON-lines file.
- leaks (`check_leaks`), per variant: its train split (the shard stage's, recomputed
  from its corpus) against the held-out documents, by id and by MinHash near-duplicate
  (a shared LSH band key under the base's MinHash settings, the dedup stage's test).
  `leaks.json` names each pair; the flow refuses a spec with any.
- choices (`build_choices`): a multiple-choice continuation task from the held-out
  documents, needing no download: up to `context_chars` of a document, then its true
  next sentence among `choices - 1` sentences of other held-out documents, all preceded
  by the same separator, in an order drawn from `seed`. `items.jsonl`.
- score (`score_model`), per trained model: bits per byte over the held-out documents
  (each encoded with the model's tokenizer, preceded by `<|endoftext|>`, cut into
  non-overlapping windows as tasks/evaluate.py does: tokenizers do not matter), and the
  choice accuracy: the option with the lowest nats per UTF-8 byte given the context
  wins (per byte, so a longer sentence is not penalised for its length). `score.json`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from fineflow.ablation import ChoiceConfig, HoldoutConfig
from fineflow.config import MinHashConfig, ShardConfig
from fineflow.storage.artifacts import ArtifactWriter, Manifest, stage_key
from fineflow.tasks.dedup import CORPUS_DB, iter_kept
from fineflow.tasks.minhash import band_keys, signatures
from fineflow.tasks.shard import corpus_split

STAGE_VERSION = 1
EVAL_PARQUET = "eval.parquet"
EVAL_SCHEMA = pa.schema([("id", pa.string()), ("cluster_id", pa.string()), ("text", pa.string())])
ITEMS = "items.jsonl"
_BATCH = 512  # documents per read / per MinHash batch
_SENTENCE_END = re.compile(r"([.!?…][\"')\]]*)\s+")  # group 1: the sentence's last marks
_SHOWN = 5  # leaking pairs named in the refusal


def split_docs(db_path: Path, val_fraction: float, val: bool) -> Iterator[list[tuple]]:
    """(id, cluster_id, text) of a corpus's kept documents on one side of the shard stage's
    split (tasks/shard.py: by cluster id), in corpus order, batched."""
    split = corpus_split(db_path, val_fraction)
    for rows in iter_kept(db_path, "id, cluster_id, text", _BATCH, None):
        yield [r for r in rows if split.is_val(r[1]) == val]


def read_texts(path: Path) -> list[tuple[str, str, str]]:
    """(id, cluster_id, text) of a JSON-lines file of {"text": ..., "id": optional}."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text = row["text"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f'{path}:{n}: wants a JSON object with a "text" ({exc})') from exc
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f'{path}:{n}: "text" must be a non-empty string')
        doc_id = str(row.get("id", f"text-{n}"))
        out.append((doc_id, doc_id, text))
    if not out:
        raise ValueError(f"{path}: no documents")
    return out


def held_out(db_path: Path, fraction: float) -> list[tuple[str, str, str]]:
    """The base corpus's kept documents that its shard split sends to val."""
    return [r for rows in split_docs(db_path, fraction, val=True) for r in rows]


@task(name="eval_set", task_run_name="eval_set")
def hold_out(root: str, corpus: Manifest, cfg: HoldoutConfig) -> Manifest:
    """The held-out documents every model is scored on (module docstring)."""
    key = stage_key(STAGE_VERSION, corpus, cfg)
    if cfg.texts is not None:
        rows = read_texts(cfg.texts)
    else:
        rows = held_out(corpus.path(Path(root), CORPUS_DB), cfg.fraction)
    rows = rows[: cfg.max_docs] if cfg.max_docs else rows
    if not rows:
        raise ValueError(
            f"no held-out documents: none of the base corpus's {corpus.counts.get('kept', 0)}"
            f" documents falls in eval.fraction {cfg.fraction}; raise it or give eval.texts"
        )
    with ArtifactWriter(Path(root), "eval_set", key) as out:
        cols = list(zip(*rows, strict=True))
        table = pa.table([pa.array(c, pa.string()) for c in cols], schema=EVAL_SCHEMA)
        pq.write_table(table, out.path(EVAL_PARQUET))
        n_bytes = sum(len(t.encode()) for _, _, t in rows)
        return out.commit(cfg, counts={"docs": len(rows), "bytes": n_bytes})


def read_eval(root: Path, eval_set: Manifest) -> list[tuple[str, str, str]]:
    table = pq.read_table(eval_set.path(root, EVAL_PARQUET))
    return list(zip(*(table.column(n).to_pylist() for n in EVAL_SCHEMA.names), strict=True))


def _band_index(texts: list[str], ids: list[str], cfg: MinHashConfig) -> dict[tuple, str]:
    """(band, key) -> the first id with that band key."""
    index: dict[tuple, str] = {}
    for lo in range(0, len(texts), _BATCH):
        keys = band_keys(signatures(texts[lo : lo + _BATCH], cfg), cfg.bands, cfg.rows)
        for doc_id, row in zip(ids[lo : lo + _BATCH], keys.tolist(), strict=True):
            for band, k in enumerate(row):
                index.setdefault((band, k), doc_id)
    return index


def find_leaks(
    held: list[tuple[str, str, str]],
    train: Iterator[list[tuple[str, str, str]]],
    cfg: MinHashConfig,
) -> tuple[int, list[tuple[str, str]], list[tuple[str, str]]]:
    """(train docs seen, [(id, id)] same document, [(held id, train id)] near-duplicates)."""
    ids = {doc_id for doc_id, _, _ in held}
    index = _band_index([t for _, _, t in held], [i for i, _, _ in held], cfg)
    n, same, near = 0, [], []
    for rows in train:
        n += len(rows)
        same += [(doc_id, doc_id) for doc_id, _, _ in rows if doc_id in ids]
        keys = band_keys(signatures([t for _, _, t in rows], cfg), cfg.bands, cfg.rows)
        for (doc_id, _, _), row in zip(rows, keys.tolist(), strict=True):
            hit = next((index[(b, k)] for b, k in enumerate(row) if (b, k) in index), None)
            if hit is not None and doc_id not in ids:
                near.append((hit, doc_id))
    return n, same, near


@task(name="leaks", task_run_name="leaks")
def check_leaks(
    root: str, eval_set: Manifest, corpus: Manifest, shard: ShardConfig, minhash: MinHashConfig
) -> Manifest:
    """Which held-out documents a corpus's train split holds, by id and near-duplicate."""
    key = stage_key(STAGE_VERSION, eval_set, corpus, shard, minhash)
    base = Path(root)
    db = corpus.path(base, CORPUS_DB)
    train = split_docs(db, shard.val_fraction, val=False)
    n, same, near = find_leaks(read_eval(base, eval_set), train, minhash)
    with ArtifactWriter(base, "leaks", key) as out:
        out.path("leaks.json").write_text(
            json.dumps({"same_id": same, "near_duplicate": near}, indent=1) + "\n"
        )
        return out.commit(
            minhash,
            counts={"train_docs": n, "same_id": len(same), "near_duplicate": len(near)},
            stats={"shown": "; ".join(f"{a} ~ {b}" for a, b in (same + near)[:_SHOWN])},
        )


# --- the multiple-choice continuation task ---------------------------------------------


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence: split at .!? (and closing quotes) before whitespace,
    and at line breaks."""
    out = []
    for para in re.finditer(r"[^\n]+", text):
        start = para.start()
        for m in _SENTENCE_END.finditer(para.group()):
            out.append((start, para.start() + m.end(1)))
            start = para.start() + m.end()
        if start < para.end():
            out.append((start, para.end()))
    return [(a, b) for a, b in out if text[a:b].strip()]


def make_items(docs: list[str], cfg: ChoiceConfig) -> list[dict]:
    """Up to cfg.items questions: {context, options (each with its separator), answer}."""
    rng = random.Random(cfg.seed)
    fits = [
        [(a, b) for a, b in sentences(d) if cfg.min_chars <= b - a <= cfg.max_chars] for d in docs
    ]
    pool = [(i, docs[i][a:b]) for i, spans in enumerate(fits) for a, b in spans]
    per_doc = []
    for i, spans in enumerate(fits):
        gaps = [(i, a, b) for a, b in spans if docs[i][:a].strip()]  # something before it
        rng.shuffle(gaps)
        per_doc.append(gaps)
    order = [g for round_ in _round_robin(per_doc) for g in round_]  # one per document first
    items = []
    for i, a, b in order:
        if len(items) == cfg.items:
            break
        others = sorted({s for j, s in pool if j != i and s != docs[i][a:b]})
        if len(others) < cfg.choices - 1:
            continue
        before = docs[i][:a]
        context = before.rstrip()
        sep = "\n" if "\n" in before[len(context) :] else " "  # as the document has it
        context = context[-cfg.context_chars :]
        options = [docs[i][a:b], *rng.sample(others, cfg.choices - 1)]
        shuffled = rng.sample(range(cfg.choices), cfg.choices)
        items.append(
            {
                "doc": i,
                "context": context,
                "options": [sep + options[k] for k in shuffled],
                "answer": shuffled.index(0),
            }
        )
    return items


def _round_robin(lists: list[list]) -> Iterator[list]:
    for depth in range(max((len(x) for x in lists), default=0)):
        yield [x[depth] for x in lists if depth < len(x)]


@task(name="choices", task_run_name="choices")
def build_choices(root: str, eval_set: Manifest, cfg: ChoiceConfig) -> Manifest:
    """The choice task's questions from the held-out documents (module docstring)."""
    key = stage_key(STAGE_VERSION, eval_set, cfg)
    base = Path(root)
    items = make_items([t for _, _, t in read_eval(base, eval_set)], cfg)
    if not items:
        raise ValueError(
            f"the {eval_set.counts['docs']} held-out documents give no choice question "
            f"({cfg.choices} options of {cfg.min_chars}-{cfg.max_chars} characters from "
            "different documents): raise eval.fraction or lower choice.choices"
        )
    with ArtifactWriter(base, "choices", key) as out:
        with open(out.path(ITEMS), "w", encoding="utf-8") as f:
            for item in items:
                f.write(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n")
        return out.commit(cfg, counts={"items": len(items)}, stats={"chance": 1 / cfg.choices})


# --- scoring a trained model -------------------------------------------------------------


def choice_picks(model, encode, eot_id: int, items: list[dict], device) -> list[int]:
    """The option each item's model picks: lowest nats per byte of the option."""
    import torch

    block = model.config.block_size
    picks = []
    model.eval()
    with torch.no_grad():
        for item in items:
            ctx = encode([item["context"]])[0]
            rows = []
            for opt in encode(item["options"]):
                opt = opt[: block - 1]
                keep = block - len(opt)  # context tokens that fit before the option
                rows.append(([eot_id, *ctx[max(0, len(ctx) - keep) :], *opt], len(opt)))
            width = max(len(s) for s, _ in rows) - 1
            x = torch.zeros((len(rows), width), dtype=torch.long)
            y = torch.full((len(rows), width), -1, dtype=torch.long)
            for r, (seq, n_opt) in enumerate(rows):
                x[r, : len(seq) - 1] = torch.tensor(seq[:-1])
                y[r, len(seq) - 1 - n_opt : len(seq) - 1] = torch.tensor(seq[-n_opt:])
            _, loss = model(x.to(device), y.to(device), reduction="none")
            nats = loss.double().cpu().masked_fill(y == -1, 0).sum(dim=1)
            per_byte = nats / torch.tensor([len(o.encode()) for o in item["options"]])
            picks.append(int(per_byte.argmin()))
    return picks


@task(name="score", task_run_name="score")
def score_model(
    root: str, model: Manifest, tokenizer: Manifest, eval_set: Manifest, choices: Manifest
) -> Manifest:
    """Bits per byte on the held-out documents and the choice accuracy of one model."""
    from fineflow.tasks.evaluate import load_model, val_metrics
    from fineflow.tasks.shard import encode_docs
    from fineflow.tasks.tokenizer import (
        EOT,
        TOKENIZER_JSON,
        hf_encoder,
        load_tokenizer,
        token_byte_lengths,
    )
    from fineflow.training.runtime import pick_device

    key = stage_key(STAGE_VERSION, model, tokenizer, eval_set, choices)
    base = Path(root)
    device = pick_device("auto")
    tok = load_tokenizer(tokenizer.path(base, TOKENIZER_JSON))
    eot_id = tok.token_to_id(EOT)
    encode = hf_encoder(tok)
    gpt = load_model(base, model, device)
    texts = [t for _, _, t in read_eval(base, eval_set)]
    tokens = encode_docs(encode, texts, eot_id)
    metrics = val_metrics(gpt, [tokens], token_byte_lengths(tok), eot_id, device)
    items = [json.loads(line) for line in choices.path(base, ITEMS).read_text().splitlines()]
    picks = choice_picks(gpt, encode, eot_id, items, device)
    right = sum(p == item["answer"] for p, item in zip(picks, items, strict=True))
    figures = {
        "bits_per_byte": round(metrics["bits_per_byte"], 6),
        "eval_loss": round(metrics["val_loss"], 6),
        "choice_accuracy": round(right / len(items), 6),
    }
    with ArtifactWriter(base, "score", key) as out:
        out.path("score.json").write_text(
            json.dumps({**figures, **metrics, "picks": picks}, indent=1, sort_keys=True) + "\n"
        )
        return out.commit(
            None,
            counts={
                "eval_tokens": int(metrics["val_tokens"]),
                "eval_bytes": int(metrics["val_bytes"]),
                "choice_items": len(items),
                "choice_right": right,
            },
            stats=figures,
        )
