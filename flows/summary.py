"""One line per stage for the end of a run: name, ran/cached, seconds, key figure.

Seconds are the time a stage added to the run: from the moment the previous stage's
last task finished to the moment this stage's last task finished (the per-WARC
stages overlap, so this is each stage's share of the wall clock, not CPU time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prefect.futures import PrefectFuture, wait

from storage.artifacts import Manifest


@dataclass(frozen=True)
class StageLine:
    stage: str
    ran: int
    cached: int
    seconds: float
    figure: str

    @property
    def status(self) -> str:
        if self.ran and self.cached:
            return f"ran {self.ran}/{self.ran + self.cached}"
        return "ran" if self.ran else "cached"

    def __str__(self) -> str:
        return f"{self.stage:<11} {self.status:<10} {self.seconds:7.1f}s  {self.figure}"


class StageClock:
    """Waits for each stage's futures in pipeline order and times what each one added."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.lines: list[StageLine] = []

    def finish(self, stage: str, futures: list[PrefectFuture]) -> list[Manifest]:
        wait(futures)
        results = [f.result() for f in futures]  # raises the stage's error, naming the task
        now = time.monotonic()
        cached = sum(f.state.name == "Cached" for f in futures)
        self.lines.append(
            StageLine(stage, len(futures) - cached, cached, now - self.last, figure(stage, results))
        )
        self.last = now
        return results


def _total(manifests: list[Manifest], key: str) -> int:
    return sum(m.counts.get(key, 0) for m in manifests)


def figure(stage: str, results: list) -> str:
    """The one number a user wants to see for `stage`."""
    ms = [m for m in results if isinstance(m, Manifest)]
    if stage == "resolve_crawl":
        return f"{sum(len(r) for r in results)} WARC URLs"
    if stage == "download":
        mb = sum(f.bytes for m in ms for f in m.files if f.path != "manifest.json") / 1e6
        return f"{len(ms)} WARCs fetched, {mb:.1f} MB"
    if stage == "url_filter":
        dropped = sum(v for m in ms for k, v in m.counts.items() if k.startswith("dropped_block"))
        dropped += _total(ms, "dropped_banned_word")
        return (
            f"{_total(ms, 'kept')} of {_total(ms, 'total')} responses kept, {dropped} blocklisted"
        )
    if stage == "extract":
        return f"{_total(ms, 'kept')} docs kept of {_total(ms, 'total')} pages"
    if stage == "minhash":
        return f"{_total(ms, 'docs')} documents signed"
    m = ms[0]
    if stage == "dedup":
        return (
            f"{m.counts['kept']} docs kept, {m.counts['dropped_duplicate']} removed as duplicates"
        )
    if stage == "tokenizer":
        return f"vocab size {m.stats['vocab_size']}"
    if stage == "shard":
        c = m.counts
        return (
            f"{c['train_tokens']:,} train + {c['val_tokens']:,} val tokens in {c['shards']} shards"
        )
    if stage == "train":
        return (
            f"{m.counts['steps']} steps, train loss {m.stats['first_train_loss']:.3f} -> "
            f"{m.stats['final_train_loss']:.3f}, val loss {m.stats['val_loss']:.3f}"
        )
    if stage == "evaluate":
        return (
            f"val loss {m.stats['val_loss']:.3f}, {m.stats['bits_per_byte']:.3f} bits/byte; "
            f"sample: {m.stats['first_sample']!r}"
        )
    return ""
