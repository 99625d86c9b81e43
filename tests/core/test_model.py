"""The GPT: shapes, causality, KV-cache sampling against the uncached path, learning."""

from __future__ import annotations

import math

import pytest
import torch

from fineflow.config import ModelConfig
from fineflow.model import GPT, sample_next

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16)
VOCAB = 97
PADDED = 128  # 97 rounded up to a multiple of vocab_multiple (64)


def _model(seed: int = 0, **options: object) -> GPT:
    torch.manual_seed(seed)
    model = GPT(TINY.model_copy(update=options), VOCAB)
    with torch.no_grad():  # sharpen the freshly initialised weights so samples vary by position
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def test_shapes_and_losses() -> None:
    model = _model()
    idx = torch.randint(0, VOCAB, (3, TINY.block_size))
    logits, loss = model(idx)
    assert logits.shape == (3, TINY.block_size, PADDED) and loss is None
    _, mean = model(idx, idx)
    _, per_token = model(idx, idx, reduction="none")
    assert per_token.shape == (3, TINY.block_size)
    torch.testing.assert_close(per_token.mean(), mean)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, TINY.block_size + 1, dtype=torch.long))


def test_ignored_targets_cost_nothing() -> None:
    model = _model()
    idx = torch.randint(0, VOCAB, (2, 8))
    targets = idx.clone()
    targets[:, 5:] = -1
    _, losses = model(idx, targets, reduction="none")
    assert (losses[:, 5:] == 0).all() and (losses[:, :5] > 0).all()


@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize("mlp", ["relu2", "swiglu"])
def test_causal(qk_norm: bool, mlp: str) -> None:
    model = _model(qk_norm=qk_norm, mlp=mlp)
    idx = torch.randint(0, VOCAB, (2, TINY.block_size))
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % VOCAB
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_param_count_and_flops() -> None:
    model = GPT(TINY, VOCAB)
    d, L = TINY.n_embd, TINY.n_layer
    hs = d // TINY.n_head
    per_block = 12 * d * d + 2 * d + 2 * hs  # qkv, proj, mlp; two norms; q and k norms
    assert model.num_params() == 2 * PADDED * d + L * per_block + d  # untied embedding, head
    assert model.estimate_flops_per_token() == 6 * (L * 12 * d * d + PADDED * d) + 12 * L * d * 16

    # SwiGLU: gate, up and down at 8/3 x d rounded up to 64 (32 -> 128); no q/k norms here
    plain = GPT(TINY.model_copy(update={"mlp": "swiglu", "qk_norm": False}), VOCAB)
    per_block = 4 * d * d + 3 * d * 128 + 2 * d
    assert plain.num_params() == 2 * PADDED * d + L * per_block + d
    assert (
        GPT(ModelConfig(n_embd=768, n_head=12, mlp="swiglu"), 8).blocks[0].mlp.c_proj.in_features
        == 2048
    )


def test_vocab_is_padded_and_padding_is_never_sampled() -> None:
    assert GPT(TINY, 128).padded_vocab == 128
    assert GPT(TINY.model_copy(update={"vocab_multiple": 1}), 97).padded_vocab == 97
    model = _model()
    assert model.wte.weight.shape[0] == model.lm_head.weight.shape[0] == PADDED

    def favour_padding(module: torch.nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
        return torch.cat((out[..., :VOCAB], out[..., VOCAB:] + 1e3), dim=-1)

    model.lm_head.register_forward_hook(favour_padding)  # padding rows now the likeliest
    assert int(model(torch.zeros(4, 3, dtype=torch.long))[0].argmax(-1).min()) >= VOCAB
    out = model.generate(torch.zeros(4, 1, dtype=torch.long), 20, temperature=1.0)
    assert int(out.max()) < VOCAB


def test_rotary_matches_rotate_half() -> None:
    """The Hugging Face (Llama, Qwen3) convention, so the export needs no permutation."""
    from fineflow.model import apply_rotary, rotary_tables

    x = torch.randn(1, 2, 5, 8)
    cos, sin = rotary_tables(5, 8)
    cos2, sin2 = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
    rotate_half = torch.cat((-x[..., 4:], x[..., :4]), dim=-1)
    torch.testing.assert_close(apply_rotary(x, cos, sin), x * cos2 + rotate_half * sin2)


def test_residual_projections_scaled_at_init() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=8, n_head=4, n_embd=256, block_size=16), 512)
    std = model.blocks[0].mlp.c_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.blocks[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("new_tokens", [6, 40])  # 40: past block_size, so the cache restarts
@pytest.mark.parametrize("mlp", ["relu2", "swiglu"])
def test_cached_generation_equals_uncached_greedy(new_tokens: int, mlp: str) -> None:
    model = _model(mlp=mlp)
    prompt = torch.randint(0, VOCAB, (2, 5))
    cached = model.generate(prompt, new_tokens, temperature=0)
    plain = model.generate(prompt, new_tokens, temperature=0, use_cache=False)
    assert cached.shape == (2, 5 + new_tokens)
    assert torch.equal(cached[:, :5], prompt)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("top_k,top_p", [(10, None), (None, 0.9)])
def test_cached_generation_equals_uncached_sampled(top_k: int | None, top_p: float | None) -> None:
    model = _model()
    prompt = torch.randint(0, VOCAB, (2, 20))  # longer than block_size: cropped to the window
    runs = [
        model.generate(
            prompt,
            30,
            temperature=1.0,
            top_k=top_k,
            top_p=top_p,
            generator=torch.Generator().manual_seed(7),
            use_cache=use_cache,
        )
        for use_cache in (True, False, True)
    ]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert len(set(runs[0][0, 20:].tolist())) > 3  # it really sampled


def test_top_k_and_top_p_restrict_the_choice() -> None:
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0, -2.0]]).expand(200, 5)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=gen).flatten().tolist()) == {0, 1}
    # p(0) = 0.70, p(1) = 0.26: top_p 0.8 keeps both, 0.5 keeps only the first
    assert set(sample_next(logits, 1.0, top_p=0.8, generator=gen).flatten().tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_p=0.5, generator=gen).flatten().tolist()) == {0}
    assert sample_next(logits[:1], 0.0).item() == 0


def test_loss_falls_on_repetitive_data() -> None:
    torch.manual_seed(0)
    model = GPT(TINY, VOCAB)
    pattern = torch.randint(0, VOCAB, (11,))
    data = pattern.repeat(40)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        starts = torch.randint(0, len(data) - TINY.block_size - 1, (8,))
        batch = torch.stack([data[s : s + TINY.block_size + 1] for s in starts])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 4.0  # about ln(97) = 4.57 at init
    assert losses[-1] < 0.5
