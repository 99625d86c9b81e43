"""A trained fineflow GPT as a Hugging Face `transformers` model directory (Qwen3 layout).

    python -m fineflow.export data/train/<key> out/my-model
    # then: AutoModelForCausalLM.from_pretrained("out/my-model"),
    #       AutoTokenizer.from_pretrained("out/my-model")

Why Qwen3 and not Llama: fineflow's attention RMS-normalises q and k per head before
the rotation (QK-norm), which Llama has no weights for; Qwen3 does exactly that, with
the same rotate_half rotary convention, RMSNorm (eps 1e-6), no biases and an untied
head. The one difference is the MLP: fineflow's is c_proj(relu(c_fc x)^2), Qwen3's is
down(act(gate x) * up x). With act = relu and gate = up = c_fc the two are the same
function (relu(g) * g = relu(g)^2 for every g), so the export writes c_fc twice: the
exported model computes the same logits, at 1.5x the MLP weights. A model trained
without QK-norm has no exact Qwen3 twin and is refused.

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

from fineflow.model import GPT, RMS_EPS, ROPE_BASE

TOKENIZER_JSON = "tokenizer.json"
EOT = "<|endoftext|>"


def hf_config(model: GPT, eot_id: int | None) -> dict[str, Any]:
    """config.json of the Qwen3 twin of `model`."""
    cfg = model.config
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": model.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": 4 * cfg.n_embd,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "head_dim": cfg.n_embd // cfg.n_head,
        "hidden_act": "relu",  # with gate = up: relu(x) * x = relu(x)^2 (module docstring)
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": RMS_EPS,
        "rope_theta": ROPE_BASE,  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_BASE},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """fineflow weights under Qwen3's names (module docstring), float32, contiguous."""
    if not model.qk_norm:
        raise ValueError("a model without QK-norm has no exact Qwen3 equivalent: not exported")
    V, C = model.vocab_size, model.config.n_embd
    out = {
        "model.embed_tokens.weight": model.wte.weight[:V],
        "model.norm.weight": model.norm_f.weight,
        "lm_head.weight": model.lm_head.weight[:V],
    }
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        q, k, v = block.attn.c_attn.weight.split(C, dim=0)
        out |= {
            p + "input_layernorm.weight": block.norm_1.weight,
            p + "self_attn.q_proj.weight": q,
            p + "self_attn.k_proj.weight": k,
            p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": block.attn.c_proj.weight,
            p + "self_attn.q_norm.weight": block.attn.q_norm.weight,
            p + "self_attn.k_norm.weight": block.attn.k_norm.weight,
            p + "post_attention_layernorm.weight": block.norm_2.weight,
            p + "mlp.gate_proj.weight": block.mlp.c_fc.weight,
            p + "mlp.up_proj.weight": block.mlp.c_fc.weight,
            p + "mlp.down_proj.weight": block.mlp.c_proj.weight,
        }
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
    """The GPT in a train artifact directory (config.json + model.pt), on the CPU."""
    spec = json.loads((train_dir / "config.json").read_text())["model"]
    model = GPT.from_spec(spec)
    model.load_state_dict(torch.load(train_dir / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()


def export(train_dir: Path, out_dir: Path, tokenizer_json: Path | None = None) -> Path:
    """Write the HF directory for the train artifact at `train_dir`; returns out_dir.

    tokenizer_json: defaults to the train artifact's own copy (tokenizer.json).
    """
    train_dir, out_dir = Path(train_dir), Path(out_dir)
    model = load_trained(train_dir)
    tok_path = Path(tokenizer_json) if tokenizer_json else train_dir / TOKENIZER_JSON
    vocab = json.loads(tok_path.read_text())
    eot_id = next((t["id"] for t in vocab.get("added_tokens", []) if t["content"] == EOT), None)
    out_dir.mkdir(parents=True, exist_ok=True)
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
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fineflow.export", description="train artifact -> transformers directory"
    )
    parser.add_argument("train_dir", type=Path, help="data/train/<key>")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: the artifact's)")
    args = parser.parse_args(argv)
    out = export(args.train_dir, args.out_dir, args.tokenizer)
    print(f"wrote {out} (Qwen3ForCausalLM, float32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
