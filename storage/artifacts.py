"""The artifact store: `<data_root>/<stage>/<key>/…`, written atomically, described by manifests.

A stage writes into a hidden temporary directory, then `commit()` hashes the files,
writes `manifest.json` last and renames the directory into place, so a directory
under its final name is always complete. A killed run leaves only a `.tmp-*`
directory, which nothing trusts and the next writer of that key removes (ScratchDir).

`key` is the stage's input fingerprint, so the same inputs always land in the same
place; the manifest's `fingerprint` is the content hash of what was written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from fineflow.storage import layout
from fineflow.storage.fingerprint import file_sha256, fingerprint
from fineflow.storage.names import inside

MANIFEST_NAME = "manifest.json"
_VERIFIED_NAME = ".verified.json"  # (size, mtime) seen at the last full check; not content


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str  # relative to the artifact directory
    bytes: int
    sha256: str

    @field_validator("path")
    @classmethod
    def _relative_and_inside(cls, v: str) -> str:
        # a manifest read back from disk or a bucket names files; it never names a way out
        parts = v.split("/")
        if not v or v.startswith("/") or "\\" in v or "\0" in v or ".." in parts or "" in parts:
            raise ValueError(f"artifact file path {v!r} is not a plain relative path")
        return v


class Manifest(BaseModel):
    """What a stage made: where it lives, its content fingerprint, its counts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str
    key: str
    warc: str | None = None  # per-WARC stages: the WARC's file name
    files: tuple[FileEntry, ...]
    fingerprint: str
    config_fingerprint: str
    counts: dict[str, int] = {}
    stats: dict[str, float | int | str] = {}

    def cache_identity(self) -> dict[str, Any]:
        """What a downstream cache key sees: what the artifact holds, not where or how.

        Its content fingerprint and counts, never its `key` (the inputs that made it):
        a stage that reruns and makes the same content leaves everything after it cached
        (early cutoff). File hashes are left out too: they only prove integrity (see
        `verify`), and a DuckDB file rebuilt with the same rows has other bytes.
        """
        return {
            "stage": self.stage,
            "warc": self.warc,
            "fingerprint": self.fingerprint,
            "counts": self.counts,
        }

    @property
    def dir(self) -> str:
        """Directory relative to the data root."""
        return f"{self.stage}/{self.key}"

    def path(self, root: Path, name: str) -> Path:
        """Absolute path of one of this artifact's files (fetched first if it is remote only)."""
        if not any(f.path == name for f in self.files):
            raise KeyError(f"{self.stage} artifact {self.key} has no file {name!r}")
        return self._here(root) / name

    def paths(self, root: Path, suffix: str = "") -> list[Path]:
        base = self._here(root)
        return [base / f.path for f in self.files if f.path.endswith(suffix)]

    def _here(self, root: Path) -> Path:
        """The artifact's local directory; under a remote data root, fetched if absent."""
        base = layout.artifact_dir(root, self.stage, self.key)
        if _FETCHERS and not (base / MANIFEST_NAME).is_file():
            fetch = _FETCHERS.get(str(Path(root).resolve()))
            if fetch is not None:
                fetch(Path(root), self)
        return base


# Local data root -> how to bring one of its artifacts down from the remote it mirrors
# (storage.remote.mirror registers it in each process that runs a task): the stages read
# files through Manifest.path/paths, so an artifact is downloaded when, and only when,
# a stage that runs opens it.
_FETCHERS: dict[str, Callable[[Path, Manifest], Any]] = {}


def on_absent(root: Path, fetch: Callable[[Path, Manifest], Any]) -> None:
    """Have Manifest.path/paths call `fetch(root, manifest)` for an artifact not under `root`."""
    _FETCHERS[str(Path(root).resolve())] = fetch


def stage_key(stage_version: int, *inputs: Any) -> str:
    """The input fingerprint that names a stage's output directory."""
    return fingerprint(stage_version, *inputs)[:24]


class ArtifactWriter:
    """Context manager that builds one artifact in a temp dir and commits it atomically."""

    def __init__(self, root: Path, stage: str, key: str, warc: str | None = None) -> None:
        self.root, self.stage, self.key, self.warc = Path(root), stage, key, warc
        self.final = layout.artifact_dir(self.root, stage, key)
        self._scratch = ScratchDir(self.final)
        self.tmp = self._scratch.path

    def __enter__(self) -> ArtifactWriter:
        self._scratch.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._scratch.close()

    def path(self, name: str) -> Path:
        """Where to write file `name` (inside the temporary directory; PathEscape if it
        would resolve anywhere else: an absolute name, `..`, a symlink out)."""
        p = inside(self.tmp, Path(name))
        p.parent.mkdir(parents=True, exist_ok=True)
        inside(self.tmp, p)  # a symlinked parent directory is seen once it exists
        return p

    def commit(
        self,
        config: BaseModel | None,
        counts: dict[str, int] | None = None,
        stats: dict[str, float | int | str] | None = None,
        content: str | None = None,
    ) -> Manifest:
        """Hash the files, write manifest.json, move the directory into place.

        `content` stands in for the file hashes as the artifact's fingerprint when the
        bytes are not reproducible but the meaning is (a DuckDB file carries random
        header bytes): give a digest of what the files hold.
        """
        files = tuple(
            FileEntry(
                path=str(p.relative_to(self.tmp)), bytes=p.stat().st_size, sha256=file_sha256(p)
            )
            for p in sorted(self.tmp.rglob("*"))
            if p.is_file()
        )
        manifest = Manifest(
            stage=self.stage,
            key=self.key,
            warc=self.warc,
            files=files,
            fingerprint=content or fingerprint([(f.path, f.sha256) for f in files]),
            config_fingerprint=fingerprint(config),
            counts=counts or {},
            stats=stats or {},
        )
        _write_json_atomic(self.tmp / MANIFEST_NAME, manifest.model_dump(mode="json"))
        install(self.tmp, self.final, manifest)
        return manifest


class ScratchDir:
    """`.<key>.tmp-<id>` beside an artifact's final directory, locked while it is written.

    The writer holds an `flock` on the directory itself (the OS drops it when the process
    dies), so when a new writer of the key opens its own, every other `.<key>.tmp-*` that
    it can lock belongs to a writer that was killed, and is removed with any `.<key>.old-*`
    that `install` left behind; a live writer's (locked) is left alone.
    """

    def __init__(self, final: Path) -> None:
        self.final = final
        self.path = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        self._fd: int | None = None

    def open(self) -> Path:
        # locked under a name the sweep ignores, then renamed: a `.tmp-*` is never unlocked
        # while its writer lives (the lock belongs to the directory, not to its name)
        born = self.path.with_name(self.path.name.replace(".tmp-", ".new-", 1))
        born.mkdir(parents=True)
        self._fd = os.open(born, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # new and unique: never waits
        born.rename(self.path)
        self._sweep()
        return self.path

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)  # gone already once installed
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _sweep(self) -> None:
        name = self.final.name
        for other in self.final.parent.glob(f".{name}.*"):
            if other == self.path or not other.is_dir():
                continue
            trash = other.name.startswith(f".{name}.old-")
            dead = other.name.startswith(f".{name}.tmp-") and _unlocked(other)
            if trash or dead:
                shutil.rmtree(other, ignore_errors=True)


def _unlocked(directory: Path) -> bool:
    """True if no live process holds `directory`'s flock (its writer was killed)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False  # gone meanwhile, or not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the probe's lock too


def install(tmp: Path, final: Path, manifest: Manifest | None = None) -> None:
    """Move a complete directory (an artifact's: manifest.json inside) to its final name."""
    if final.exists():  # an older, possibly tampered copy: replace it whole
        trash = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        final.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    tmp.rename(final)
    if manifest is not None:
        _remember_verified(final, manifest)


def manifests(result: Any) -> list[Manifest]:
    """The manifests a task returned (one, or a list of them; anything else holds none)."""
    if isinstance(result, Manifest):
        return [result]
    if isinstance(result, (list, tuple)):
        return [m for m in result if isinstance(m, Manifest)]
    return []


def verify(root: Path, manifest: Manifest, full: bool = False) -> str | None:
    """None if the artifact on disk is exactly what the manifest says, else why not.

    The quick check (the default) rehashes a file only when its size or mtime moved since
    the last check; `full` rehashes every file (`fineflow verify`)."""
    base = layout.artifact_dir(Path(root), manifest.stage, manifest.key)
    if not (base / MANIFEST_NAME).is_file():
        return f"{manifest.dir}: manifest.json missing"
    try:  # small: the one on disk must say what the cache record says, to the letter
        on_disk = Manifest.model_validate_json((base / MANIFEST_NAME).read_bytes())
    except ValueError:
        on_disk = None
    if on_disk != manifest:
        return f"{manifest.dir}/manifest.json: differs from the cache record (edited?)"
    seen = _read_verified(base)
    for f in manifest.files:
        p = base / f.path
        if not p.is_file():
            return f"{manifest.dir}/{f.path}: missing"
        st = p.stat()
        if st.st_size != f.bytes:
            return f"{manifest.dir}/{f.path}: size {st.st_size} != {f.bytes}"
        unmoved = not full and seen.get(f.path) == [st.st_size, st.st_mtime_ns]
        if not unmoved and _sha256_now(p) != f.sha256:
            return f"{manifest.dir}/{f.path}: content changed"
    _remember_verified(base, manifest)
    return None


def _sha256_now(path: Path) -> str:
    """The file's sha256 read from disk now (file_sha256 memoises on size + mtime)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_store(root: Path, repair: bool = False) -> tuple[int, list[tuple[str, str]]]:
    """Rehash every artifact under `root`: (artifacts checked, [(dir, what is wrong)]).

    `repair` removes each damaged artifact directory: its cache record then fails the
    quick check, so the next run rebuilds exactly those stages (and what they feed)."""
    checked, damaged = 0, []
    for path in sorted(Path(root).glob(f"*/*/{MANIFEST_NAME}")):
        base = path.parent
        if base.name.startswith(".") or base.parent.name.startswith("_"):
            continue  # scratch, and _prefect/_logs/_failed: not artifacts
        checked += 1
        try:
            m = Manifest.model_validate_json(path.read_bytes())
        except ValueError as exc:
            damaged.append((f"{base.parent.name}/{base.name}", f"unreadable manifest: {exc}"))
        else:
            if (why := verify(root, m, full=True)) is None:
                continue
            damaged.append((m.dir, why))
        if repair:
            trash = base.parent / f".{base.name}.old-{uuid.uuid4().hex[:8]}"
            base.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
    return checked, damaged


def load_manifest(root: Path, stage: str, key: str) -> Manifest | None:
    p = layout.artifact_dir(Path(root), stage, key) / MANIFEST_NAME
    if not p.is_file():
        return None
    return Manifest.model_validate_json(p.read_text())


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _read_verified(base: Path) -> dict[str, list[int]]:
    try:
        return json.loads((base / _VERIFIED_NAME).read_text())
    except (OSError, ValueError):
        return {}


def _remember_verified(base: Path, manifest: Manifest) -> None:
    seen = {}
    for f in manifest.files:
        st = (base / f.path).stat()
        seen[f.path] = [st.st_size, st.st_mtime_ns]
    with contextlib.suppress(OSError):  # a read-only store still verifies, only slower
        _write_json_atomic(base / _VERIFIED_NAME, seen)
