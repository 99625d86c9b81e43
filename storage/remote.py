"""Object storage as the data root: the local working copy, mirrored to an fsspec URL.

With `remote_root` set (s3://, gs://, az://, file://…), stages read and write the local
data root exactly as without it; this module keeps `<remote_root>/` a mirror of it with
the same layout, in an order that makes every object's presence a promise:

    <stage>/<key>/<files…>        uploaded first
    <stage>/<key>/manifest.json   uploaded last: no manifest, no artifact
    _prefect/results/<cache key>  the Prefect cache record, after every artifact it names

Uploads run as each task's completion hook, also when the task was `Cached`, so an upload
that a killed run left half done is finished by the next run. Prefect logs a failing hook
and goes on; the next run retries.

Downloads are lazy, decided where the cache key is computed (before Prefect looks the key
up). A record, local or the remote's, is a hit when every artifact it names is intact in
the working copy or held by the remote (its manifest there, equal): the task comes back
`Cached` and nothing is downloaded. A task that runs fetches an input artifact when it
opens one of its files (stages reach files only through Manifest.path/paths, which call
back here), every file checked against the manifest (size, sha256) before it is installed
locally; an input whose local copy is no longer intact is fetched again before the task
starts. So a fresh machine that grows the corpus by one WARC fetches only what dedup reads
of the old WARCs (filtered documents, signatures), never their WARC files or extracted
pages, and a run whose every stage is cached fetches only the outputs it reports
(flows/pipeline.py). A remote file that fails its check takes its manifest down (the next
run rebuilds that artifact) and fails the reading task with the reason. Cache keys see
the remote URL, not the local path, so every machine computes the same keys.

Locks stay local (`flock`): two machines writing one key at once both upload; the last
manifest wins, and a reader that gets the other writer's files fails the sha256 check.
Training checkpoints (`.<key>.work`) and DuckDB spill files stay local.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fineflow.storage import layout
from fineflow.storage.artifacts import (
    MANIFEST_NAME,
    Manifest,
    ScratchDir,
    install,
    manifests,
    on_absent,
    verify,
)
from fineflow.storage.fingerprint import file_sha256
from fineflow.storage.names import inside

log = logging.getLogger("fineflow.remote")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")


class RemoteMiss(Exception):
    """The remote holds no complete, matching copy of what was asked for.

    broken: a manifest is there but a file it names is missing or differs.
    """

    def __init__(self, message: str, broken: bool = False) -> None:
        super().__init__(message)
        self.broken = broken


def is_url(value: object) -> bool:
    return isinstance(value, str) and bool(_URL.match(value))


def check_url(url: str) -> str | None:
    """None if fsspec can open `url` here, else why not (unknown protocol, backend missing)."""
    import fsspec

    protocol, _, path = url.partition("://")
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        return f"unknown fsspec protocol {protocol!r} in {url!r}"
    except ImportError as exc:  # fsspec names the package: "Install s3fs to access S3"
        return f"{url!r} needs an fsspec backend that is not installed: {exc}"
    if not path.strip("/"):
        return f"{url!r} names no bucket or directory"
    return None


@dataclass(frozen=True)
class Remote:
    """The mirror at `url` (a directory of the same layout as the local data root)."""

    url: str

    def _fs(self) -> tuple[Any, str]:
        from fsspec.core import url_to_fs

        # fsspec caches filesystem instances; a local directory needs its parents made
        local = self.url.partition("://")[0] in ("file", "local")
        fs, base = url_to_fs(self.url, **({"auto_mkdir": True} if local else {}))
        return fs, base.rstrip("/")

    def _cat(self, rel: str) -> bytes | None:
        fs, base = self._fs()
        try:
            return fs.cat_file(f"{base}/{rel}")
        except FileNotFoundError:
            return None

    def has(self, rel: str) -> bool:
        fs, base = self._fs()
        return fs.exists(f"{base}/{rel}")

    # -- artifacts ----------------------------------------------------------------------

    def push_artifact(self, root: Path, m: Manifest) -> bool:
        """Upload a committed artifact, files first, manifest.json last; False if it was there."""
        remote_body = self._cat(f"{m.dir}/{MANIFEST_NAME}")
        if remote_body is not None and Manifest.model_validate_json(remote_body) == m:
            return False  # there already (perhaps only there: a cached stage fetches nothing)
        local = layout.artifact_dir(root, m.stage, m.key)
        body = (local / MANIFEST_NAME).read_bytes()
        if Manifest.model_validate_json(body) != m:
            raise RuntimeError(f"{m.dir}: the local manifest.json is not the one to upload")
        fs, base = self._fs()
        target = f"{base}/{m.dir}"
        if remote_body is not None:  # replaced: take the old promise down before the files change
            fs.rm_file(f"{target}/{MANIFEST_NAME}")
        for f in m.files:
            fs.put_file(str(local / f.path), f"{target}/{f.path}")
        fs.pipe_file(f"{target}/{MANIFEST_NAME}", body)
        return True

    def fetch_artifact(self, root: Path, m: Manifest) -> None:
        """Download the artifact `m` names into the local root, checked file by file.

        Raises RemoteMiss if the remote has no manifest for it (never uploaded, or an
        upload that was cut short), a different one, or a file that fails its check.
        """
        body = self._cat(f"{m.dir}/{MANIFEST_NAME}")
        if body is None:
            raise RemoteMiss(f"{m.dir}: no manifest.json on {self.url}")
        if Manifest.model_validate_json(body) != m:
            raise RemoteMiss(f"{m.dir}: the manifest on {self.url} is another build")
        fs, base = self._fs()
        scratch = ScratchDir(layout.artifact_dir(root, m.stage, m.key))  # never trusted if killed
        tmp = scratch.open()
        try:
            for f in m.files:
                p = inside(tmp, Path(f.path))
                p.parent.mkdir(parents=True, exist_ok=True)
                try:
                    fs.get_file(f"{base}/{m.dir}/{f.path}", str(p))
                except FileNotFoundError as exc:
                    raise RemoteMiss(f"{m.dir}/{f.path}: missing on {self.url}", True) from exc
                if p.stat().st_size != f.bytes or file_sha256(p) != f.sha256:
                    msg = f"{m.dir}/{f.path}: content on {self.url} does not match"
                    raise RemoteMiss(msg, broken=True)
            (tmp / MANIFEST_NAME).write_bytes(body)
            install(tmp, scratch.final, m)
        finally:
            scratch.close()

    # -- cache records ------------------------------------------------------------------

    def push_record(self, root: Path, cache_key: str, result: Any) -> bool:
        """Upload the artifacts a cache record names, then the record; False if it was there."""
        pushed = [self.push_artifact(root, m) for m in manifests(result)]
        rel = f"_prefect/results/{cache_key}"
        body = (layout.results_dir(root) / cache_key).read_bytes()
        if not any(pushed) and self._cat(rel) == body:
            return False
        fs, base = self._fs()
        fs.pipe_file(f"{base}/{rel}", body)
        return True

    def record(self, cache_key: str) -> bytes | None:
        """The remote cache record's bytes, or None; nothing is restored."""
        return self._cat(f"_prefect/results/{cache_key}")

    def holds(self, m: Manifest) -> bool:
        """True if the remote has this very artifact: its manifest.json, equal to `m`.

        No file is read: the upload order makes a manifest the promise that its files are
        complete, and they are checked (size, sha256) when something fetches them.
        """
        body = self._cat(f"{m.dir}/{MANIFEST_NAME}")
        return body is not None and Manifest.model_validate_json(body) == m

    def localize(self, root: Path, ms: Iterable[Manifest]) -> list[Manifest]:
        """Fetch those of `ms` that are not intact in the local root; returns what was fetched.

        An artifact whose remote files fail their check loses its remote manifest here, so
        the next run rebuilds it instead of trusting it again; the RemoteMiss is raised.
        """
        fetched = []
        for m in ms:
            if verify(root, m) is None:
                continue
            try:
                self.fetch_artifact(root, m)
            except RemoteMiss as miss:
                if miss.broken:
                    self._retract(m)
                    raise RemoteMiss(
                        f"{miss}; its manifest was taken down, so the next run rebuilds it",
                        broken=True,
                    ) from miss
                raise
            fetched.append(m)
        return fetched

    def _retract(self, m: Manifest) -> None:
        fs, base = self._fs()
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(f"{base}/{m.dir}/{MANIFEST_NAME}")
        log.warning("%s: remote files do not match their manifest; manifest removed", m.dir)

    def held(self, root: Path, result: Any) -> set[str] | None:
        """The dirs of `result`'s artifacts that only the remote holds (the rest are intact
        under `root`); None if one is neither. What `fineflow status` predicts with, too."""
        held = set()
        for m in manifests(result):
            if verify(root, m) is None:
                continue
            if not self.holds(m):
                return None
            held.add(m.dir)
        return held

    def _usable_record(self, root: Path, cache_key: str) -> set[str] | None:
        """The dirs of the record's artifacts that only the remote holds; None if unusable.

        A record (local, else the remote's, copied down) is usable when each artifact it
        names is intact locally or held by the remote. Nothing else is downloaded.
        """
        from prefect._internal.result_records import ResultRecord

        local = layout.results_dir(root) / cache_key
        body = local.read_bytes() if local.is_file() else self.record(cache_key)
        if body is None:
            return None
        held = self.held(root, ResultRecord.deserialize(body).result)
        if held is None:
            log.warning("record %s: an artifact is neither here nor on %s", cache_key, self.url)
            return None
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{cache_key}.{uuid.uuid4().hex[:8]}")
            tmp.write_bytes(body)
            tmp.replace(local)
            log.info("cache record %s taken from %s", cache_key, self.url)
        return held

    def restore(
        self, root: Path, cache_key: str, inputs: dict[str, Any], refresh: bool
    ) -> set[str]:
        """Before a cache lookup; returns the artifacts to trust although only the remote has them.

        A task that will come back `Cached` fetches nothing (its record, a few hundred
        bytes, at most): its artifacts stay on the remote until a stage that runs reads
        them. A task that will run fetches its inputs first.
        """
        on_absent(root, self._fetch_one)  # this process's stages open remote-only inputs
        if not refresh:
            try:
                held = self._usable_record(root, cache_key)
            except Exception as exc:  # an unreadable record: the stage runs, as without a remote
                log.warning("cache record %s not usable: %s", cache_key, exc)
                held = None
            if held is not None:
                return held
        # The task runs. Inputs absent here come down when it opens them (Manifest.path);
        # a local copy that is no longer intact is replaced now.
        present = [
            m
            for value in inputs.values()
            for m in manifests(value)
            if (layout.artifact_dir(root, m.stage, m.key) / MANIFEST_NAME).is_file()
        ]
        self.localize(root, present)
        return set()

    def _fetch_one(self, root: Path, m: Manifest) -> None:
        if self.localize(root, [m]):
            log.info("%s fetched from %s", m.dir, self.url)


@dataclass(frozen=True)
class PushToRemote:
    """Task completion hook: upload what the task's cache record names, then the record."""

    url: str
    root: str
    __name__ = "push_to_remote"  # how Prefect's logs name the hook

    def __call__(self, task: Any, task_run: Any, state: Any) -> None:
        record = state.data
        storage_key = getattr(getattr(record, "metadata", None), "storage_key", None)
        if storage_key is None:  # not persisted: nothing a later run could reuse
            return
        key = Path(storage_key).name
        remote = Remote(self.url)
        if state.name == "Cached" and remote.has(f"_prefect/results/{key}"):
            return  # the record is up, so everything it names went up before it
        if remote.push_record(Path(self.root), key, record.result):
            log.info("%s uploaded to %s", key, self.url)
