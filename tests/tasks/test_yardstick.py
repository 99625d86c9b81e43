"""The ablation's yardstick without Prefect: held-out documents, leaks, the choice task."""

from __future__ import annotations

import json
import random

import pytest
import torch

from fineflow.ablation import ChoiceConfig
from fineflow.config import MinHashConfig, ModelConfig
from fineflow.model import GPT
from fineflow.tasks.tokenizer import EOT, hf_encoder, train_bpe
from fineflow.tasks.yardstick import (
    choice_picks,
    find_leaks,
    make_items,
    read_texts,
    sentences,
)


def doc(seed: int, n: int = 12) -> str:
    """A document of n distinct sentences of made-up words, different for each seed."""
    rng = random.Random(seed)
    words = [
        "".join(rng.choice("abcdefghiklmnoprstuvw") for _ in range(rng.randint(3, 8)))
        for _ in range(60)
    ]
    return " ".join(
        "The " + " ".join(rng.choice(words) for _ in range(8)) + f" number {seed}-{i}."
        for i in range(n)
    )


def test_sentences_split_at_stops_and_lines():
    text = 'One two three. "Four five?" Six!\nSeven eight\n\nNine.'
    assert [text[a:b] for a, b in sentences(text)] == [
        "One two three.",
        '"Four five?"',
        "Six!",
        "Seven eight",
        "Nine.",
    ]


def test_items_hold_the_true_next_sentence_among_others_from_other_documents():
    docs = [doc(i) for i in range(6)]
    cfg = ChoiceConfig(items=30, choices=4, min_chars=10, max_chars=200, context_chars=120)
    items = make_items(docs, cfg)
    assert len(items) == 30 and items == make_items(docs, cfg)  # deterministic from the seed
    assert len({it["doc"] for it in items}) == 6  # one per document first
    for it in items:
        d = docs[it["doc"]]
        assert len(it["options"]) == 4 and len(it["context"]) <= 120
        true = it["options"][it["answer"]]
        assert true.startswith(" ") and d[d.index(it["context"]) + len(it["context"]) :].startswith(
            true
        )
        for k, opt in enumerate(it["options"]):
            if k != it["answer"]:
                assert opt.startswith(" ") and opt.strip() not in d  # from another document
    answers = [it["answer"] for it in items]
    assert len(set(answers)) > 1  # the answer's place is drawn, not fixed
    assert make_items(docs, cfg.model_copy(update={"seed": 1})) != items


def test_too_few_documents_give_no_item():
    assert make_items([doc(0)], ChoiceConfig(choices=2, min_chars=10)) == []


def test_leaks_by_id_and_by_near_duplicate():
    held = [("h1", "h1", doc(1, 30)), ("h2", "h2", doc(2, 30))]
    near = doc(2, 30).replace("number 2-5.", "number 2-5 indeed.")
    train = [[("h1", "c", "other text entirely"), ("t1", "t1", doc(3, 30)), ("t2", "t2", near)]]
    n, same, near_pairs = find_leaks(held, iter(train), MinHashConfig())
    assert n == 3
    assert same == [("h1", "h1")]
    assert near_pairs == [("h2", "t2")]
    _, same, near_pairs = find_leaks(held, iter([[("t1", "t1", doc(3, 30))]]), MinHashConfig())
    assert same == [] and near_pairs == []


def test_read_texts_names_the_bad_line(tmp_path):
    f = tmp_path / "eval.jsonl"
    f.write_text(json.dumps({"text": "a document", "id": "x"}) + "\n\n" + json.dumps({"t": 1}))
    with pytest.raises(ValueError, match=r"eval.jsonl:3: wants a JSON object with a \"text\""):
        read_texts(f)
    f.write_text(json.dumps({"text": "a document", "id": "x"}) + "\n" + '{"text": "b"}\n')
    assert read_texts(f) == [("x", "x", "a document"), ("text-2", "text-2", "b")]


def test_a_model_that_learnt_the_documents_picks_their_sentences():
    """A tiny GPT overfit on the documents picks their true next sentence far above chance;
    the same GPT untrained does not."""
    docs = [doc(i, 8) for i in range(5)]
    tok = train_bpe(docs, 300)
    encode, eot = hf_encoder(tok), tok.token_to_id(EOT)
    items = make_items(docs, ChoiceConfig(items=25, choices=3, min_chars=10, context_chars=200))
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=128)
    model = GPT(cfg, tok.get_vocab_size())
    device = torch.device("cpu")
    untrained = choice_picks(model, encode, eot, items, device)
    ids = [t for d in docs for t in [eot, *encode([d])[0]]]
    data = torch.tensor(ids)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(150):
        starts = torch.randint(
            0, len(data) - 129, (8,), generator=torch.Generator().manual_seed(step)
        )
        x = torch.stack([data[s : s + 128] for s in starts])
        y = torch.stack([data[s + 1 : s + 129] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    picks = choice_picks(model, encode, eot, items, device)
    right = sum(p == it["answer"] for p, it in zip(picks, items, strict=True))
    before = sum(p == it["answer"] for p, it in zip(untrained, items, strict=True))
    assert right >= 0.8 * len(items) > before
