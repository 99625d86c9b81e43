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

Downloads run where the cache key is computed (before Prefect looks the key up): a record
missing locally but present remotely is fetched with its artifacts, every file checked
against the record's manifest (size, sha256), and only then written locally, so the task
comes back `Cached`; anything that fails a check is left out and the stage runs. A local
artifact that went missing or changed is fetched again the same way. Cache keys see the
remote URL, not the local path, so every machine computes the same keys.

Locks stay local (`flock`): two machines writing one key at once both upload; the last
manifest wins, and a reader that gets the other writer's files fails the sha256 check.
Training checkpoints (`.<key>.work`) and DuckDB spill files stay local.
"""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage import layout
from storage.artifacts import MANIFEST_NAME, Manifest, install, manifests, verify
from storage.fingerprint import file_sha256

log = logging.getLogger("fineflow.remote")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")


class RemoteMiss(Exception):
    """The remote holds no complete, matching copy of what was asked for."""


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
        local = layout.artifact_dir(root, m.stage, m.key)
        body = (local / MANIFEST_NAME).read_bytes()
        if Manifest.model_validate_json(body) != m:
            raise RuntimeError(f"{m.dir}: the local manifest.json is not the one to upload")
        fs, base = self._fs()
        target = f"{base}/{m.dir}"
        remote_body = self._cat(f"{m.dir}/{MANIFEST_NAME}")
        if remote_body == body:
            return False
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
        final = layout.artifact_dir(root, m.stage, m.key)
        tmp = final.parent / f".{m.key}.tmp-{uuid.uuid4().hex[:8]}"  # never trusted if killed
        try:
            for f in m.files:
                p = tmp / f.path
                p.parent.mkdir(parents=True, exist_ok=True)
                try:
                    fs.get_file(f"{base}/{m.dir}/{f.path}", str(p))
                except FileNotFoundError as exc:
                    raise RemoteMiss(f"{m.dir}/{f.path}: missing on {self.url}") from exc
                if p.stat().st_size != f.bytes or file_sha256(p) != f.sha256:
                    raise RemoteMiss(f"{m.dir}/{f.path}: content on {self.url} does not match")
            (tmp / MANIFEST_NAME).write_bytes(body)
            install(tmp, final, m)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

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

    def fetch_record(self, root: Path, cache_key: str) -> bool:
        """Restore a cache record and its artifacts from the remote; False if it has none."""
        from prefect._internal.result_records import ResultRecord

        body = self._cat(f"_prefect/results/{cache_key}")
        if body is None:
            return False
        for m in manifests(ResultRecord.deserialize(body).result):
            if verify(root, m) is not None:
                self.fetch_artifact(root, m)
        dest = layout.results_dir(root) / cache_key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{cache_key}.{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(body)
        tmp.replace(dest)
        return True

    def restore(self, root: Path, cache_key: str, inputs: dict[str, Any], refresh: bool) -> None:
        """Before a cache lookup: inputs' artifacts made local, the task's record restored."""
        for value in inputs.values():
            for m in manifests(value):
                local = layout.artifact_dir(root, m.stage, m.key) / MANIFEST_NAME
                if not local.is_file():  # made on another machine (a Dask worker, say)
                    self.fetch_artifact(root, m)
        if refresh:
            return
        record = layout.results_dir(root) / cache_key
        try:
            if not record.is_file():
                if self.fetch_record(root, cache_key):
                    log.info("cache record %s restored from %s", cache_key, self.url)
                return
            from prefect._internal.result_records import ResultRecord

            for m in manifests(ResultRecord.deserialize(record.read_bytes()).result):
                if verify(root, m) is not None:
                    self.fetch_artifact(root, m)
                    log.info("%s restored from %s", m.dir, self.url)
        except RemoteMiss as miss:
            log.warning("not restored from the remote (%s); the stage runs", miss)
        except Exception as exc:  # an unreadable record: the stage runs, as without a remote
            log.warning("cache record %s not restored: %s", cache_key, exc)


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
