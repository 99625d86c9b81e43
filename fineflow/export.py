"""A trained fineflow GPT as a Hugging Face `transformers` model directory (Qwen3 or Llama).

    fineflow export out/my-model            (or: python -m fineflow.export data/train/<key> out)
    # then: AutoModelForCausalLM.from_pretrained("out/my-model"),
    #       AutoTokenizer.from_pretrained("out/my-model")

With QK-norm (the default) the twin is Qwen3: it RMS-normalises q and k per head before
the rotation as fineflow does, which Llama has no weights for. Without QK-norm it is
Llama. Both share fineflow's rotate_half rotary convention, RMSNorm (eps 1e-6), no
biases and an untied head. Their MLP is down(act(gate x) * up x): fineflow's SwiGLU is
exactly that (act = silu; c_fc holds gate then up). Its squared-ReLU MLP,
c_proj(relu(c_fc x)^2), becomes act = relu with gate = up = c_fc, the same function
(relu(g) * g = relu(g)^2 for every g), so the export writes c_fc twice: the exported
model computes the same logits, at 1.5x the MLP weights.

The embedding and head rows beyond the tokenizer's vocabulary (vocab padding) are
dropped, so the exported vocab_size is the tokenizer's and nothing can sample them.

Written without transformers (which is only a test dependency): config.json,
generation_config.json, model.safetensors (float32, the format written by hand:
an 8-byte little-endian header length, a JSON header, the raw tensors),
tokenizer.json and tokenizer_config.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
from pathlib import Path
from typing import Any

import torch

from fineflow.model import GPT, RMS_EPS, ROPE_BASE, mlp_hidden
from fineflow.storage.artifacts import ScratchDir, install
from fineflow.vocab import EOT, TOKENIZER_JSON


def hf_architecture(model: GPT) -> str:
    """Qwen3ForCausalLM with QK-norm, LlamaForCausalLM without."""
    return "Qwen3ForCausalLM" if model.config.qk_norm else "LlamaForCausalLM"


def hf_config(model: GPT, eot_id: int | None) -> dict[str, Any]:
    """config.json of the Qwen3 (or Llama) twin of `model`."""
    cfg = model.config
    qwen = cfg.qk_norm
    return {
        "architectures": [hf_architecture(model)],
        "model_type": "qwen3" if qwen else "llama",
        "vocab_size": model.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": mlp_hidden(cfg),
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "head_dim": cfg.n_embd // cfg.n_head,
        # relu2: with gate = up, relu(x) * x = relu(x)^2 (module docstring)
        "hidden_act": "silu" if cfg.mlp == "swiglu" else "relu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": RMS_EPS,
        "rope_theta": ROPE_BASE,  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_BASE},
        "attention_bias": False,
        "attention_dropout": 0.0,
        **({"use_sliding_window": False} if qwen else {"mlp_bias": False}),
        "tie_word_embeddings": False,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """fineflow weights under Qwen3's / Llama's names (module docstring), float32, contiguous."""
    V, C = model.vocab_size, model.config.n_embd
    out = {
        "model.embed_tokens.weight": model.wte.weight[:V],
        "model.norm.weight": model.norm_f.weight,
        "lm_head.weight": model.lm_head.weight[:V],
    }
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        q, k, v = block.attn.c_attn.weight.split(C, dim=0)
        fc = block.mlp.c_fc.weight
        gate, up = fc.chunk(2, dim=0) if model.config.mlp == "swiglu" else (fc, fc)
        out |= {
            p + "input_layernorm.weight": block.norm_1.weight,
            p + "self_attn.q_proj.weight": q,
            p + "self_attn.k_proj.weight": k,
            p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": block.attn.c_proj.weight,
            p + "post_attention_layernorm.weight": block.norm_2.weight,
            p + "mlp.gate_proj.weight": gate,
            p + "mlp.up_proj.weight": up,
            p + "mlp.down_proj.weight": block.mlp.c_proj.weight,
        }
        if model.config.qk_norm:
            out[p + "self_attn.q_norm.weight"] = block.attn.q_norm.weight
            out[p + "self_attn.k_norm.weight"] = block.attn.k_norm.weight
    return {k: t.detach().float().cpu().contiguous() for k, t in out.items()}


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """float32 tensors in the safetensors format, names sorted, header padded to 8 bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset, blobs = 0, []
    for name in sorted(tensors):
        data = tensors[name].numpy().astype("<f4", copy=False).tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def load_trained(train_dir: Path) -> GPT:
    """The GPT in a train artifact directory (config.json + model.pt), on the CPU.

    Files that do not load (damaged, or not a train artifact's) raise ModelDirError.
    """
    try:
        spec = json.loads((train_dir / "config.json").read_text())["model"]
        model = GPT.from_spec(spec)
        weights = torch.load(train_dir / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(weights)
    except Exception as exc:  # JSON, a missing key, torch's unpickler: their errors vary
        raise ModelDirError(
            f"{train_dir} does not hold a loadable model (config.json + model.pt): "
            f"{type(exc).__name__}: {str(exc)[:200]}"
        ) from exc
    return model.eval()


EXPORT_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        TOKENIZER_JSON,
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
)


class ModelDirError(ValueError):
    """No trained model where one was asked for, one that does not load, or an export
    target that cannot be written; the message says which and what to do."""


def _check_target(out_dir: Path) -> None:
    """out_dir is new, empty, or an earlier export (which is replaced); else ModelDirError."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelDirError(f"{out_dir} exists and is not a directory")
    found = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    other = [name for name in found if name not in EXPORT_FILES]
    if other:
        raise ModelDirError(
            f"{out_dir} holds files an export does not write ({', '.join(other[:5])}"
            f"{', ...' if len(other) > 5 else ''}); give a new or empty directory"
        )


def export(train_dir: Path, out_dir: Path, tokenizer_json: Path | None = None) -> Path:
    """Write the HF directory for the train artifact at `train_dir`; returns out_dir.

    tokenizer_json: defaults to the train artifact's own copy (tokenizer.json).
    out_dir must be new, empty or an earlier export, which is replaced whole. The files
    are written into a scratch directory beside it and renamed into place, so a killed
    export leaves no half-written model where from_pretrained would load it.
    """
    train_dir, out_dir = Path(train_dir), Path(out_dir)
    _check_target(out_dir)
    model = load_trained(train_dir)
    tok_path = Path(tokenizer_json) if tokenizer_json else train_dir / TOKENIZER_JSON
    try:
        vocab = json.loads(tok_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{tok_path} is not a readable tokenizer.json: {exc}") from exc
    eot_id = next((t["id"] for t in vocab.get("added_tokens", []) if t["content"] == EOT), None)
    # the artifact store's scratch-then-rename: an earlier export (or an empty dir) is
    # replaced whole, a killed export leaves only a `.tmp-*` the next export removes
    scratch = ScratchDir(out_dir)
    try:
        _write_export(model, tok_path, eot_id, scratch.open())
        install(scratch.path, out_dir)
    finally:
        scratch.close()
    return out_dir


def _write_export(model: GPT, tok_path: Path, eot_id: int | None, out_dir: Path) -> None:
    """The files of EXPORT_FILES into out_dir."""
    (out_dir / "config.json").write_text(json.dumps(hf_config(model, eot_id), indent=1) + "\n")
    gen = {"bos_token_id": eot_id, "eos_token_id": eot_id}
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=1) + "\n")
    write_safetensors(hf_state_dict(model), out_dir / "model.safetensors")
    shutil.copyfile(tok_path, out_dir / TOKENIZER_JSON)
    special = {"bos_token": EOT, "eos_token": EOT} if eot_id is not None else {}
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model.config.block_size,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=1) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=1) + "\n")


def describe_export(out_dir: Path) -> str:
    """'Qwen3ForCausalLM, float32': what an exported directory holds."""
    config = json.loads((Path(out_dir) / "config.json").read_text())
    return f"{config['architectures'][0]}, {config['torch_dtype']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fineflow.export", description="train artifact -> transformers directory"
    )
    parser.add_argument("train_dir", type=Path, help="data/train/<key>")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: the artifact's)")
    args = parser.parse_args(argv)
    try:
        out = export(args.train_dir, args.out_dir, args.tokenizer)
    except ModelDirError as err:
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({describe_export(out)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
