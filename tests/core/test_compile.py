"""torch.compile on the CPU: the GPU path's compiled model, checked before a GPU is rented.

The trainer compiles the model on CUDA (fineflow/training/loop.py); nothing else in the
suite compiles it, so a graph break or an Inductor failure would first show on a card.
Here Inductor's C++ backend compiles the same model on the CPU:
- with fullgraph=True (any graph break is an error), forward with targets and backward
  give the eager loss, logits and every parameter's gradient, for the training loss
  (reduction "mean") and evaluation's per-token losses (reduction "none"), and a second
  batch of the same shape reuses the compiled graph;
- `train` with compile=True reports itself compiled, compiles the model as one graph,
  and follows the eager run's loss history to its final weights.
Inductor reorders float32 sums, so compiled and eager agree to a relative tolerance,
not bitwise; the comparison is shown to catch a 0.1% change to one weight.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from fineflow.config import ModelConfig
from fineflow.model import GPT
from fineflow.training.loop import train
from tests.helpers.training import tiny_train_config

SMALL = ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=32)
VOCAB = 300  # padded to 320 rows: the padding rows get gradients too
# float32: |compiled - eager| <= REL * max |eager|, per tensor. Measured on the 2-core dev
# box: under 1e-6 for logits, loss and gradients; a 0.1% change to one weight moves the
# logits by 6e-4 and gradients by 2e-3 (test_the_comparison_catches_a_small_change).
REL = 1e-5


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    """Dynamo starts empty in each test (no compiled frames, counters at zero)."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| over max |want| (want is never all zeros here)."""
    assert got.shape == want.shape
    return float((got - want).abs().max() / want.abs().max())


def loss_and_grads(
    forward: torch.nn.Module, model: GPT, x: torch.Tensor, y: torch.Tensor, reduction: str
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Logits, loss and each parameter's gradient of one forward + backward."""
    model.zero_grad(set_to_none=True)
    logits, loss = forward(x, y, reduction=reduction)
    assert loss is not None
    # "none": per-token losses (B, T); a fixed weighting makes their backward non-trivial.
    total = (
        loss
        if reduction == "mean"
        else (loss * torch.linspace(0.5, 1.5, y.numel()).view_as(y)).mean()
    )
    total.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), loss.detach(), grads


def batch(seed: int, size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (size, SMALL.block_size + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def assert_matches(
    got: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]],
    want: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]],
) -> None:
    assert rel_error(got[0], want[0]) <= REL, "logits"
    assert rel_error(got[1], want[1]) <= REL, "loss"
    assert got[2].keys() == want[2].keys()
    for name, grad in want[2].items():
        assert rel_error(got[2][name], grad) <= REL, name


@pytest.mark.parametrize(
    "reduction,options",
    [("mean", {}), ("none", {}), ("mean", {"mlp": "swiglu", "qk_norm": False})],
)
def test_compiled_model_matches_eager_with_no_graph_break(
    reduction: str, options: dict[str, object]
) -> None:
    torch.manual_seed(0)
    model = GPT(SMALL.model_copy(update=options), VOCAB)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x, y = batch(1)

    eager = loss_and_grads(model, model, x, y, reduction)
    got = loss_and_grads(compiled, model, x, y, reduction)
    assert counter.frame_count == 1  # one graph: fullgraph would have raised on a break
    assert_matches(got, eager)
    # every parameter gets a gradient, in both runs
    assert eager[2].keys() == {n for n, _ in model.named_parameters()}
    if reduction == "none":
        assert got[1].shape == y.shape

    # another batch of the same shape runs the same compiled graph
    x2, y2 = batch(2)
    again = loss_and_grads(compiled, model, x2, y2, reduction)
    assert counter.frame_count == 1
    assert_matches(again, loss_and_grads(model, model, x2, y2, reduction))


def test_the_comparison_catches_a_small_change() -> None:
    """A 0.1% change to one weight (a far smaller fault than a wrong kernel) fails it."""
    torch.manual_seed(0)
    model = GPT(SMALL, VOCAB)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.blocks[1].mlp.c_fc.weight.mul_(1.001)
    x, y = batch(1)
    want = loss_and_grads(model, model, x, y, "mean")
    twin = copy.deepcopy(model)
    assert_matches(loss_and_grads(twin, twin, x, y, "mean"), want)
    got = loss_and_grads(changed, changed, x, y, "mean")
    with pytest.raises(AssertionError):
        assert_matches(got, want)


def test_train_compiled_follows_the_eager_run(tmp_path: Path) -> None:
    pattern = np.random.default_rng(1).integers(0, VOCAB, size=13)
    tokens = [np.tile(pattern, 60).astype(np.uint16)]
    cfg = tiny_train_config(model=SMALL, steps=8, log_every=1, checkpoint_every=8)
    eager = train(tokens, VOCAB, cfg.model_copy(update={"compile": False}), tmp_path / "eager")
    compiled = train(tokens, VOCAB, cfg.model_copy(update={"compile": True}), tmp_path / "compiled")
    assert eager.info["compiled"] is False and compiled.info["compiled"] is True
    assert [s for s, _ in compiled.history] == [s for s, _ in eager.history] == list(range(1, 9))
    got = torch.tensor([loss for _, loss in compiled.history])
    want = torch.tensor([loss for _, loss in eager.history])
    assert want[-1] < want[0] - 1.0  # it learns, so a wrong gradient would show
    # Measured: losses within 3e-7, weights within 7e-5 after 8 AdamW steps (Adam's
    # normalisation magnifies rounding in near-zero gradients).
    assert rel_error(got, want) <= 1e-5
    # The trainer compiles without fullgraph: a graph break would split the model silently.
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    a, b = compiled.model.state_dict(), eager.model.state_dict()
    for name in b:
        assert rel_error(a[name], b[name]) <= 1e-3, name
