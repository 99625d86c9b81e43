"""The one cache policy every stage uses, and the lock that keeps overlapping runs apart.

Cache key = the task's name + the digest of its named key parts (storage/why.py): its
inputs (upstream manifests by content identity, sub-configs by their output-affecting
fields, any `Path` by content; never the data root, so a moved or copied root stays
cached), the code it runs (every project definition the task reaches, normalised:
storage/code.py) and, if its module has one, `STAGE_VERSION` as an explicit salt.
Early cutoff falls out: a stage that reruns and makes the same content hands the same
identity downstream, and everything after it stays cached.

A cached result is trusted only while its artifact is intact: before Prefect looks
the key up, the stored manifest is verified against the files on disk, and a record
whose files are missing or changed is deleted, so the stage runs again instead of
handing a dangling manifest downstream. A task run that misses says why (a log line
on the task run, shown in the Prefect UI, and `_prefect/why/` for the run summary and
`fineflow status --why`).

`lookup` reads what a run would find for a task run, without running anything: `fineflow
status` shows it; the data flow asks it first and, when every per-WARC task run would
come back Cached, starts no process pool for them.

With a remote data root (`storage.remote`) the key also sees the remote URL, a record
the remote holds counts as a hit (its artifacts are fetched only when a stage that
runs reads them), and a completion hook uploads what a task made.

Result records live in `<data_root>/_prefect/results`; locks (SERIALIZABLE
isolation) in `<data_root>/_prefect/locks` as `flock`s, which the OS releases
when a process dies, so a killed run never leaves a lock behind.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.tasks import Task

from fineflow.storage import layout, why
from fineflow.storage.artifacts import manifests, verify
from fineflow.storage.fingerprint import fingerprint
from fineflow.storage.remote import PushToRemote, Remote

log = logging.getLogger("fineflow.cache")
T = TypeVar("T", bound=Task)


@dataclass
class StageCache(CachePolicy):
    """Named key parts (inputs, code, salt); drops records whose artifact is gone.

    With `remote` (the data root's fsspec URL), the key also sees the URL, and the remote
    is consulted before the lookup (Remote.restore).
    """

    remote: str | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        if task_ctx is None:
            return None
        task = task_ctx.task
        parts = why.key_parts(task.fn, inputs, self.remote)
        key = _key(task, parts)
        root = inputs.get("root")
        if root is not None:
            held: set[str] = set()
            if self.remote is not None:
                refresh = bool(task.refresh_cache)
                held = Remote(self.remote).restore(Path(root), key, inputs, refresh)
            stale = _drop_if_stale(task_ctx, key, Path(root), held)
            _note_why(task_ctx, Path(root), key, inputs, parts, stale)
        return key


def task_cache_key(task: Task, inputs: dict[str, Any], remote: str | None = None) -> str:
    """The key of `task` run on `inputs` (its bound arguments).

    One formula for the cache itself and for `fineflow status`, which predicts hits.
    """
    return _key(task, why.key_parts(task.fn, inputs, remote))


# What a run would do with one task run, as `lookup` predicts it (`fineflow status`'s words).
CACHED, STALE, RUNS, FORCED = "cached", "stale", "will run", "forced"
RESTORES = "cached remotely"  # remote_root holds it: reused; fetched if a running stage reads it
HITS = (CACHED, RESTORES)  # the task run would come back Cached: its work does not run
UNKNOWN = "unknown"  # its inputs are the output of a task run that will run first


def lookup(
    task: Task, root: Path, args: tuple, remote: str | None = None, forced: bool = False
) -> tuple[str, Any]:
    """(state, cached result or None) of `task` called with (root, *args), read from the
    cache records without running anything: what `StageCache` would find."""
    import inspect

    from prefect._internal.result_records import ResultRecord

    if forced:
        return FORCED, None
    inputs = dict(inspect.signature(task.fn).bind(str(root), *args).arguments)
    key = task_cache_key(task, inputs, remote)
    record = layout.results_dir(root) / key
    far = Remote(remote) if remote else None
    local = record.is_file()
    body = record.read_bytes() if local else far.record(key) if far else None
    if body is None:
        return RUNS, None
    try:
        result = ResultRecord.deserialize(body).result
    except Exception:
        return (STALE, None) if local else (RUNS, None)
    if far is not None:  # as Remote.restore decides
        held = far.held(root, result)
        if held is None:
            return (STALE, None) if local else (RUNS, None)
        return (CACHED, result) if local and not held else (RESTORES, result)
    if any(verify(root, m) for m in manifests(result)):
        return STALE, None
    return CACHED, result


def _key(task: Task, parts: dict[str, str]) -> str:
    return f"{task.name}-{fingerprint(parts)[:32]}"


def _note_why(
    task_ctx: TaskRunContext,
    root: Path,
    key: str,
    inputs: dict[str, Any],
    parts: dict[str, str],
    stale: str | None,
) -> None:
    """Record this run's key parts; on a miss, say why it runs (task run log, summary)."""
    task = task_ctx.task
    slot = why.slot(inputs)
    record = why.read(root, task.name, slot)
    store = task_ctx.result_store
    if task.refresh_cache:
        reason = "forced (--force / rerun)"
    elif stale is not None:
        reason = f"cached output not intact: {stale}"
    elif store is not None and store.exists(key):
        if record.get("parts") != parts or record.get("reason"):
            why.write(root, task.name, slot, {"parts": parts, "reason": None})
        return
    else:
        reason = why.explain(task.name, record.get("parts"), parts)
    # the flow makes these the ones to compare with once the run completes (StageClock)
    why.write(root, task.name, slot, {**record, "pending": parts, "reason": reason})
    try:
        from prefect.logging import get_run_logger

        get_run_logger(task_ctx).info("runs: %s", reason)
    except Exception:  # no run logger (a plain call): the module's logger says it
        log.info("%s [%s] runs: %s", task.name, slot, reason)


def _drop_if_stale(task_ctx: TaskRunContext, key: str, root: Path, held: set[str]) -> str | None:
    """Delete the record `key` if an artifact it names is not intact (`held`: on the remote);
    returns why, or None when the record is intact or absent."""
    store = task_ctx.result_store
    if store is None or not store.exists(key):
        return None
    try:
        result = store.read(key).result
    except Exception as exc:  # an unreadable record is as good as none
        reason = f"unreadable cache record ({exc.__class__.__name__})"
    else:
        reason = next(
            (r for m in manifests(result) if m.dir not in held and (r := verify(root, m))), None
        )
    if reason is None:
        return None
    basepath = getattr(store.result_storage, "basepath", None)
    if basepath is None:
        raise RuntimeError(f"stale cache entry {key} ({reason}) on non-local result storage")
    log.warning("cache entry %s not trusted: %s; the stage runs again", key, reason)
    Path(basepath, key).unlink(missing_ok=True)
    return reason


class FlockLockManager:
    """Prefect LockManager over `flock(2)`: released by the OS if the holder dies."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._held: dict[str, tuple[str, int]] = {}

    def __getstate__(self) -> dict[str, Any]:  # fds do not cross process boundaries
        return {"directory": self.directory, "_held": {}}

    def _open(self, key: str) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        return os.open(self.directory / f"{key}.lock", os.O_CREAT | os.O_RDWR, 0o644)

    def _flock(self, fd: int, mode: int, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)

    def acquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        if self.is_lock_holder(key, holder):
            return True
        fd = self._open(key)
        if not self._flock(fd, fcntl.LOCK_EX, acquire_timeout):
            os.close(fd)
            return False
        self._held[key] = (holder, fd)
        return True

    async def aacquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        return await asyncio.to_thread(self.acquire_lock, key, holder, acquire_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        held = self._held.get(key)
        if held is None or held[0] != holder:
            raise ValueError(f"{holder} does not hold the lock for {key}")
        fcntl.flock(held[1], fcntl.LOCK_UN)
        os.close(held[1])
        del self._held[key]

    def is_locked(self, key: str) -> bool:
        if key in self._held:
            return True
        fd = self._open(key)
        try:
            free = self._flock(fd, fcntl.LOCK_SH, 0)
            return not free
        finally:
            os.close(fd)

    def is_lock_holder(self, key: str, holder: str) -> bool:
        held = self._held.get(key)
        return held is not None and held[0] == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        if key in self._held:
            return True
        fd = self._open(key)
        try:
            return self._flock(fd, fcntl.LOCK_SH, timeout)
        finally:
            os.close(fd)

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.wait_for_lock, key, timeout)


def bind(task: T, root: Path, refresh: bool = False, remote: str | None = None) -> T:
    """The task with fineflow's cache policy, result storage and locks under `root`.

    With `remote` (an fsspec URL), `root` is its local working copy: results are restored
    from the remote before the cache lookup and uploaded to it when the task completes.
    """
    policy = StageCache(remote=remote).configure(
        isolation_level="SERIALIZABLE", lock_manager=FlockLockManager(layout.locks_dir(root))
    )
    hooks = {}
    if remote is not None:
        hooks["on_completion"] = [*task.on_completion_hooks, PushToRemote(remote, str(root))]
    return task.with_options(
        **hooks,
        cache_policy=policy,
        result_storage=layout.results_dir(root).resolve(),
        persist_result=True,
        refresh_cache=refresh,
        # corpus stages run once per flow: name the run after the stage, not `dedup-2c2`
        task_run_name=task.task_run_name or task.name,
    )
