"""The llm.c / nanoGPT token shard format, read and written; used by shard, train, evaluate.

A shard is a header of 256 little-endian int32 = [20240520, version, n_tokens, 0, ...],
then n_tokens tokens: version 1 = uint16 (vocab <= 65536), version 2 = uint32. Other
trainers (llm.c, nanoGPT's loaders) read these files as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAGIC = 20240520
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
DTYPES = {1: np.dtype("<u2"), 2: np.dtype("<u4")}


def shard_version(vocab_size: int) -> int:
    """1 (uint16 tokens) when every id fits 16 bits, else 2 (uint32)."""
    return 1 if vocab_size <= 1 << 16 else 2


def write_shard(path: Path, tokens: np.ndarray, vocab_size: int) -> None:
    """Write `tokens` (ids < vocab_size) as one llm.c shard."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"{path}: a shard holds a non-empty 1-d token array, got {tokens.shape}")
    if tokens.size >= 1 << 31:
        raise ValueError(f"{path}: {tokens.size} tokens do not fit the int32 header")
    if tokens.dtype.kind not in "iu" or tokens.min() < 0 or tokens.max() >= vocab_size:
        raise ValueError(f"{path}: tokens must be integer ids in [0, {vocab_size})")
    version = shard_version(vocab_size)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, version, tokens.size)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(DTYPES[version], copy=False).tobytes())


def read_shard(path: Path) -> np.memmap:
    """The tokens of an llm.c shard, memory-mapped read-only; checks magic, version and size."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ValueError(f"{path}: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, n = (int(v) for v in header[:3])
    if magic != MAGIC:
        raise ValueError(f"{path}: magic {magic}, expected {MAGIC}: not a token shard")
    if version not in DTYPES:
        raise ValueError(f"{path}: unknown shard version {version} (known: 1 uint16, 2 uint32)")
    dtype = DTYPES[version]
    if n <= 0 or size != HEADER_BYTES + n * dtype.itemsize:
        raise ValueError(
            f"{path}: header says {n} tokens of {dtype.itemsize} bytes, file has "
            f"{size - HEADER_BYTES} bytes after the header (truncated or corrupt)"
        )
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(n,))
