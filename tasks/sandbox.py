"""Run a function over many inputs in long-lived worker processes, each call under a timeout.

`Sandbox(fn, workers, timeout_s, memory_mb).map(args)` yields (status, value) per input,
in input order: ("ok", result), ("error", "Type: message") for an exception inside
`fn`, ("timeout", None) when a call ran past `timeout_s` (the worker is killed and a
fresh one started), ("crash", None) when the worker died (a segfault, the address
space cap `memory_mb` hit in C code, os._exit). One input is sent at a time per
worker, so a bad page costs one call, never the run.

`memory_mb` caps address space (RLIMIT_AS), not resident memory: an idle extract worker
already holds ~450 MB of it (the interpreter, lxml, pyarrow, prefect), and trafilatura on
a 10 MB page of dense markup peaks at ~890 MB (~600 MB resident), so extract's default
2048 MB cap leaves such a page room (measured in tasks/extract.py's docstring).

Workers come from the "forkserver" context: a child of the pool is forked from a
small server process, not from the caller (which may hold Prefect threads and locks),
and a replacement after a timeout is a fork, not a new interpreter. Prefect's
ProcessPoolTaskRunner workers are not daemonic (concurrent.futures' pool), so they may
start children; the tests run it there.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import resource
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from time import monotonic
from typing import Any, Literal

Status = Literal["ok", "error", "timeout", "crash"]
NO_TIMEOUT_S = 1e6  # ~11 days: what "no per-call timeout" becomes (the waits need a number)
_START_TIMEOUT_S = 300  # a cold start imports trafilatura (and its caller's module)


def available_cores() -> int:
    """The CPUs this process may run on: its affinity mask, which taskset, cpusets and
    container limits narrow (os.cpu_count() counts the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS has no affinity mask
        return os.cpu_count() or 1


def worker_count(workers: int | None) -> int:
    """A `workers` setting as a count: None (what the flow did not size) is every core
    this process may use."""
    return available_cores() if workers is None else workers


def pool_size(workers: int | None, items: int, min_items: int) -> int:
    """Processes for a stage's `items` under its `workers` setting: 1 (in-process) when
    there are fewer than `min_items`, too few to pay for starting a pool."""
    return worker_count(workers) if items >= min_items else 1


def ordered_map(
    fn: Callable[..., Any], calls: Iterable[tuple[Any, ...]], workers: int, what: str
) -> Iterator[Any]:
    """fn(*call) for each call, in order: in this process when `workers` <= 1, else on a
    Sandbox of `workers` processes without a per-call timeout, for work whose time is
    linear in its input. A call that raises or kills its process fails the whole map
    (RuntimeError naming `what`): for such work that is a bug, not bad data."""
    if workers <= 1:
        yield from (fn(*call) for call in calls)
        return
    with Sandbox(fn, workers, NO_TIMEOUT_S) as pool:
        for status, value in pool.map(calls):
            if status != "ok":
                raise RuntimeError(f"a {what} worker failed ({status}): {value}")
            yield value


def _serve(conn: Connection, fn: Callable[..., Any], memory_mb: int) -> None:
    if memory_mb:
        cap = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    conn.send(("ready", None))  # `fn` is imported: from here on the clock is fair
    while True:
        try:
            args = conn.recv()
        except EOFError:
            return
        try:
            out: tuple[str, Any] = ("ok", fn(*args))
        except Exception as exc:  # reported, the worker lives on
            out = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(out)


class _Worker:
    def __init__(self, ctx: Any, fn: Callable[..., Any], memory_mb: int) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, fn, memory_mb), daemon=True)
        self.proc.start()
        child.close()
        self.job: int | None = None
        self.deadline = 0.0
        self.name = fn.__qualname__

    def ready(self) -> _Worker:
        """Wait until the worker has imported `fn` (the first start in a process starts the
        fork server, which imports `fn`'s module; later ones fork from it)."""
        if not self.conn.poll(_START_TIMEOUT_S) or self.conn.recv() != ("ready", None):
            self.stop(kill=True)
            raise RuntimeError(f"sandbox worker for {self.name} did not start")
        return self

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        self.conn.close()
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class Sandbox:
    """A pool of `workers` processes running `fn`; use as a context manager."""

    def __init__(
        self, fn: Callable[..., Any], workers: int = 1, timeout_s: float = 5.0, memory_mb: int = 0
    ) -> None:
        if workers < 1:
            raise ValueError("a sandbox needs at least one worker")
        self.fn, self.n, self.timeout_s, self.memory_mb = fn, workers, timeout_s, memory_mb
        self.ctx = mp.get_context("forkserver")
        # Only takes effect if this process has not started its fork server yet.
        self.ctx.set_forkserver_preload([fn.__module__])
        self.workers: list[_Worker] = []
        self.restarts = 0

    def __enter__(self) -> Sandbox:
        # Started together, then waited for: n workers start in the time of one
        started = [_Worker(self.ctx, self.fn, self.memory_mb) for _ in range(self.n)]
        try:
            self.workers = [w.ready() for w in started]
        except BaseException:
            for w in started:
                w.stop(kill=True)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.workers:
            w.stop()
        self.workers = []

    def _replace(self, i: int) -> None:
        self.workers[i].stop(kill=True)
        self.workers[i] = _Worker(self.ctx, self.fn, self.memory_mb).ready()
        self.restarts += 1

    def map(self, inputs: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Status, Any]]:
        """(status, value) for each argument tuple, in order; at most `workers` in flight."""
        it = iter(inputs)
        done: dict[int, tuple[Status, Any]] = {}
        sent = emitted = 0
        exhausted = False
        while True:
            for w in self.workers:  # keep every idle worker busy
                if w.job is None and not exhausted:
                    try:
                        args = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    w.job, w.deadline = sent, monotonic() + self.timeout_s
                    sent += 1
                    with contextlib.suppress(OSError):  # a dead worker is found below
                        w.conn.send(args)
            while emitted in done:
                yield done.pop(emitted)
                emitted += 1
            busy = [w for w in self.workers if w.job is not None]
            if not busy:
                if exhausted:
                    return
                continue
            left = max(min(w.deadline for w in busy) - monotonic(), 0)
            ready = wait([w.conn for w in busy], timeout=left)
            for i, w in enumerate(self.workers):
                if w.job is None:
                    continue
                if w.conn in ready:
                    try:
                        done[w.job] = w.conn.recv()
                        w.job = None
                        continue
                    except (EOFError, OSError):
                        done[w.job] = ("crash", None)
                elif monotonic() >= w.deadline:
                    done[w.job] = ("timeout", None)
                else:
                    continue
                self._replace(i)
