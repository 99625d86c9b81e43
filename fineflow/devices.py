"""Which accelerator is this, and how many bf16 FLOP/s can it do: the denominator of MFU.

MFU (model FLOPs utilisation) = achieved model FLOP/s / the card's peak. The peaks are
dense bf16 tensor-core figures from the vendors' datasheets (half the "with sparsity"
number; for GeForce and workstation cards the figure with FP32 accumulate, which is
what bf16 autocast uses). A card not in the table gets no MFU rather than a guess:
add a row when you know its datasheet figure.
"""

from __future__ import annotations

import torch

# (substring of torch.cuda.get_device_name(), dense bf16 TFLOP/s), most specific first:
# the first row whose name occurs in the device name wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float | None], ...] = (
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),  # SXM
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("GH200", 989.0),
    ("A100", 312.0),  # SXM and PCIe alike
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", None),  # AWS's A10 variant: no datasheet figure we trust, so no MFU
    ("A10", 125.0),
    ("RTX A6000", 154.8),
    ("RTX 6000 Ada", 364.2),
    ("RTX 4090", 165.2),
    ("MI300X", 1307.4),
)


def peak_bf16_flops(name: str) -> float | None:
    """Dense bf16 FLOP/s of the card called `name`, or None when the table lacks it."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if pattern in name:
            return None if tflops is None else tflops * 1e12
    return None


def device_name(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3', or 'cpu' / 'mps'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def device_peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of one device; None on CPU/MPS or an unknown card."""
    return peak_bf16_flops(device_name(device)) if device.type == "cuda" else None


def mfu(
    tokens_per_s: float, flops_per_token: float, peak: float | None, world: int = 1
) -> float | None:
    """Fraction of `world` devices' peak that the model FLOPs reached; None without a peak."""
    if peak is None:
        return None
    return tokens_per_s * flops_per_token / (peak * world)
