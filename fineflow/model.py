"""The GPT: token ids (B, T) -> next-token logits (B, T, V), plus sampling with a KV cache.

nanoGPT's shape with the changes small modern models settled on: rotary position
embeddings instead of a learned position table, RMSNorm (pre-norm, and on queries and
keys unless `qk_norm` is off), no biases, a squared-ReLU MLP (4x wide; or SwiGLU,
`mlp: swiglu`), and scaled residual init. The model knows nothing about tokenizers or
files: it sees token id tensors only.

Config is `fineflow.config.ModelConfig` plus `vocab_size` (which comes from the data).
The embedding and the head have `padded_vocab` rows, vocab_size rounded up to a multiple
of `vocab_multiple` (64 by default): matmuls whose sizes are multiples of 64 hit the
GPU's tensor-core tiles (GPT-2's 50257 -> 50304). The extra rows are never a target
(no token id reaches them), so training only pushes their logits down; `generate`
and the export cut the logits to vocab_size, so they are never sampled.

Conventions match Hugging Face's Qwen3 exactly (see fineflow/export.py): rotary
embeddings rotate (first half, second half) pairs by +position * frequency
(`rotate_half`), RMSNorm has eps 1e-6, and q and k are normalised per head before
the rotation.
The output head is NOT tied to the token embedding. Untying costs no FLOPs (the head
matmul runs either way) but vocab * n_embd parameters: 0.5M of 1.8M at the CPU
default. It bought 0.23 nats: on 2.2M tokens of the sample's docs pages, the CPU
default (300 steps) reached a val loss of 5.25 untied vs 5.48 tied (LLaMA and nanochat
untie too).

The train and evaluate stages' cache keys see this file's code (storage/code.py): a change
of logic here reruns them; a comment or docstring edit does not.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from fineflow.config import ModelConfig

ROPE_BASE = 10_000.0  # rotary frequency base (RoFormer, LLaMA)
RMS_EPS = 1e-6  # RMSNorm epsilon (LLaMA, Qwen3)
INIT_STD = 0.02  # GPT-2's init for every matrix; residual outputs scaled further below


class RMSNorm(nn.Module):
    """x / rms(x) * weight, over the last dimension."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The gain follows x's dtype: under autocast q and k arrive in bf16, and a float32
        # gain would keep rms_norm off its fused kernel.
        return F.rms_norm(x, (x.size(-1),), self.weight.type_as(x), eps=RMS_EPS)


def rotary_tables(seq_len: int, head_dim: int, base: float = ROPE_BASE) -> torch.Tensor:
    """cos and sin of position * frequency, stacked: (2, seq_len, head_dim // 2)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, hs/2)
    return torch.stack((angles.cos(), angles.sin()))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (first half, second half) pair of x by +its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each; cos, sin: (T, hs/2)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)


class KVCache:
    """Keys and values of the tokens seen so far, per layer, preallocated to block_size.

    `pos` is how many positions are filled; the model advances it after each forward.
    """

    def __init__(self, n_layer: int, block_size: int) -> None:
        self.n_layer, self.block_size = n_layer, block_size
        self.kv: torch.Tensor | None = None  # (n_layer, 2, B, nh, block_size, hs)
        self.pos = 0

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (B, nh, T, hs); return all keys and values so far."""
        if self.kv is None:  # allocated on first use, in the dtype attention runs in
            B, nh, _, hs = k.shape
            self.kv = k.new_zeros(self.n_layer, 2, B, nh, self.block_size, hs)
        end = self.pos + k.size(2)
        self.kv[layer, 0, :, :, self.pos : end] = k
        self.kv[layer, 1, :, :, self.pos : end] = v
        return self.kv[layer, 0, :, :, :end], self.kv[layer, 1, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.n_head = layer, cfg.n_head
        head_dim = cfg.n_embd // cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)  # q, k, v at once
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        # RMSNorm on q and k keeps attention logits bounded at high learning rates
        self.q_norm = RMSNorm(head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim) if cfg.qk_norm else nn.Identity()

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (z.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for z in (q, k, v))
        q = apply_rotary(self.q_norm(q), cos, sin)  # (B, nh, T, hs)
        k = apply_rotary(self.k_norm(k), cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, nh, pos + T, hs)
        Tk = k.size(2)
        if Tk == T:  # training, or a prefill from position 0
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # T new tokens after Tk - T cached ones: query i sees keys up to Tk - T + i
            mask = torch.ones(T, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.c_proj(y)


def mlp_hidden(cfg: ModelConfig) -> int:
    """The MLP's hidden width: 4 x n_embd, or for SwiGLU 8/3 x n_embd rounded up to 64.

    SwiGLU has three matrices to relu2's two; 8/3 keeps the parameter count (LLaMA), and
    a multiple of 64 keeps the matmuls on whole tensor-core tiles.
    """
    if cfg.mlp == "swiglu":
        return -(-8 * cfg.n_embd // (3 * 64)) * 64
    return 4 * cfg.n_embd


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.swiglu, hidden = cfg.mlp == "swiglu", mlp_hidden(cfg)
        # SwiGLU's gate and up matrices as one (gate rows first): one matmul, like c_attn
        self.c_fc = nn.Linear(cfg.n_embd, (2 if self.swiglu else 1) * hidden, bias=False)
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            gate, up = self.c_fc(x).chunk(2, dim=-1)  # (B, T, hidden) each
            return self.c_proj(F.silu(gate) * up)
        return self.c_proj(F.relu(self.c_fc(x)).square())  # squared ReLU (Primer)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.norm_1 = RMSNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg, layer)
        self.norm_2 = RMSNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None
    ) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x), cos, sin, cache)
        return x + self.mlp(self.norm_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.config, self.vocab_size = cfg, vocab_size
        self.padded_vocab = -(-vocab_size // cfg.vocab_multiple) * cfg.vocab_multiple
        self.wte = nn.Embedding(self.padded_vocab, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, self.padded_vocab, bias=False)  # untied: above
        # Derived from the config, so not saved with the weights (persistent=False).
        rope = rotary_tables(cfg.block_size, cfg.n_embd // cfg.n_head)
        self.register_buffer("rope_cos", rope[0], persistent=False)  # (block_size, hs/2)
        self.register_buffer("rope_sin", rope[1], persistent=False)
        self.apply(self._init_weights)
        # Each block adds two outputs to the residual stream; scaling them keeps its
        # variance from growing with depth (GPT-2).
        for block in self.blocks:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, std=INIT_STD / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=INIT_STD)

    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this model around saved weights (see from_spec)."""
        return {**self.config.model_dump(), "vocab_size": self.vocab_size}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> GPT:
        spec = dict(spec)
        vocab_size = spec.pop("vocab_size")
        return cls(ModelConfig(**spec), vocab_size)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        reduction: str = "mean",
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, padded_vocab) and, given targets, the cross-entropy loss.

        reduction="mean": one scalar; "none": per-token losses (B, T) in nats, for
        evaluation. Targets of -1 are ignored (loss 0 with "none").
        """
        B, T = idx.shape
        pos = cache.pos if cache is not None else 0
        if pos + T > self.config.block_size:
            raise ValueError(f"{pos + T} positions > block_size {self.config.block_size}")
        cos, sin = self.rope_cos[pos : pos + T], self.rope_sin[pos : pos + T]  # (T, hs/2)
        x = self.wte(idx)  # (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        if cache is not None:
            cache.pos += T
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.float().view(B * T, -1),
            targets.reshape(B * T),
            ignore_index=-1,
            reduction=reduction,
        )
        return logits, loss.view(B, T) if reduction == "none" else loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        trace: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """idx (B, T) followed by max_new_tokens sampled tokens; temperature 0 is greedy.

        trace: a list that receives each step's next-token logits (B, vocab_size), the
        ones the token was sampled from (the run report draws them).

        Uncached, every step runs the last block_size tokens. Cached, the prompt (its
        last block_size tokens) is prefilled once, then each step feeds one token.
        When the window is full, the cache restarts with a prefill of the last
        block_size tokens: the model was trained on windows whose first token sits at
        position 0, and a sliding cache would keep keys computed with context that has
        since dropped out of the window. So past block_size every step costs a full
        prefill, and cached and uncached sampling agree token for token (the tests hold
        this): correctness over speed beyond the context the model was trained on.
        """
        window = self.config.block_size
        cache: KVCache | None = None
        for _ in range(max_new_tokens):
            if not use_cache:
                logits, _ = self(idx[:, -window:])
            elif cache is None or cache.pos == window:
                cache = KVCache(self.config.n_layer, window)
                logits, _ = self(idx[:, -window:], cache=cache)
            else:
                logits, _ = self(idx[:, -1:], cache=cache)
            last = logits[:, -1, : self.vocab_size]  # padding rows are never sampled
            if trace is not None:
                trace.append(last.float())
            next_id = sample_next(last, temperature, top_k, top_p, generator)
            idx = torch.cat((idx, next_id), dim=1)
        return idx

    def num_params(self) -> int:
        """All parameters, the embedding included."""
        return sum(p.numel() for p in self.parameters())

    def estimate_flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), as in the PaLM paper appendix B.

        6 per weight of every matmul (the head included; the embedding lookup is free)
        plus 12 * n_layer * n_embd * block_size for the attention scores and values.
        """
        cfg = self.config
        matmul_weights = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * matmul_weights + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def next_token_probs(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """The distribution (B, V) that `sample_next` draws from: logits (B, V) divided by the
    temperature, cut to the top_k tokens and then to the top_p nucleus, softmaxed."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token once the tokens before it already hold top_p of the mass; the
        # first token is always kept.
        drop = probs.cumsum(dim=-1) - probs > top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits.softmax(dim=-1)


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of logits (B, V) -> (B, 1); temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = next_token_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator)
