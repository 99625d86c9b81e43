"""Artifact store, fingerprints and the flock lock manager, without Prefect."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

from fineflow.config import ExtractConfig, UrlFilterConfig
from fineflow.storage.artifacts import ArtifactWriter, load_manifest, stage_key, verify
from fineflow.storage.cache import FlockLockManager
from fineflow.storage.fingerprint import fingerprint


def _write(root: Path, text: str = "hello"):
    with ArtifactWriter(root, "demo", "k1") as out:
        out.path("a.txt").write_text(text)
        out.path("sub/b.bin").write_bytes(b"\0" * 10)
        return out.commit(ExtractConfig(), counts={"n": 2})


def test_commit_is_atomic_and_verifiable(tmp_path):
    m = _write(tmp_path)
    assert [f.path for f in m.files] == ["a.txt", "sub/b.bin"]
    assert verify(tmp_path, m) is None
    assert load_manifest(tmp_path, "demo", "k1") == m
    assert not list((tmp_path / "demo").glob(".*tmp*"))


def test_failed_write_leaves_nothing_trusted(tmp_path):
    try:
        with ArtifactWriter(tmp_path, "demo", "k2") as out:
            out.path("a.txt").write_text("half")
            raise RuntimeError("killed")
    except RuntimeError:
        pass
    assert not (tmp_path / "demo" / "k2").exists()
    assert list((tmp_path / "demo").iterdir()) == []


def test_verify_catches_missing_and_changed_files(tmp_path):
    m = _write(tmp_path)
    p = m.path(tmp_path, "a.txt")
    time.sleep(0.01)
    p.write_text("jello")  # same size, new content
    assert "content changed" in verify(tmp_path, m)
    p.unlink()
    assert "missing" in verify(tmp_path, m)


def test_verify_catches_an_edited_manifest(tmp_path):
    m = _write(tmp_path)
    path = tmp_path / "demo" / "k1" / "manifest.json"
    body = path.read_text()
    path.write_text(body.replace('"n": 2', '"n": 1002'))
    assert "differs from the cache record" in verify(tmp_path, m)
    path.write_text(body.replace(m.fingerprint, "0" * len(m.fingerprint)))
    assert "differs from the cache record" in verify(tmp_path, m)
    path.write_text("{not json")
    assert "differs from the cache record" in verify(tmp_path, m)
    path.write_text(body)
    assert verify(tmp_path, m) is None


def test_identical_inputs_give_identical_manifests(tmp_path):
    assert _write(tmp_path / "x") == _write(tmp_path / "y")


def test_fingerprint_hashes_paths_by_content(tmp_path):
    f = tmp_path / "domains"
    f.write_text("a.example\n")
    before = fingerprint(UrlFilterConfig(blocklist=f))
    f.write_text("b.example\n")
    assert fingerprint(UrlFilterConfig(blocklist=f)) != before
    moved = tmp_path / "other"
    moved.write_text("b.example\n")
    assert fingerprint(UrlFilterConfig(blocklist=moved)) == fingerprint(
        UrlFilterConfig(blocklist=f)
    )
    assert stage_key(1, "x") != stage_key(2, "x")


def _hold(directory: Path, seconds: float) -> None:
    lm = FlockLockManager(directory)
    lm.acquire_lock("k", holder="child")
    time.sleep(seconds)  # exits without releasing: the OS must drop the lock


def test_lock_excludes_other_processes_and_dies_with_its_holder(tmp_path):
    p = mp.get_context("spawn").Process(target=_hold, args=(tmp_path, 1.5))
    p.start()
    lm = FlockLockManager(tmp_path)
    deadline = time.monotonic() + 10
    while not lm.is_locked("k") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lm.is_locked("k")
    assert not lm.acquire_lock("k", holder="me", acquire_timeout=0.1)
    p.join()
    assert lm.acquire_lock("k", holder="me", acquire_timeout=2)
    assert lm.is_lock_holder("k", "me")
    lm.release_lock("k", "me")
    assert not lm.is_locked("k")


def test_a_killed_writers_scratch_is_swept_by_the_next_writer_of_its_key(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    # two writers of key "k" in other processes: one killed mid-write, one still writing
    code = (
        "import sys, time; from storage.artifacts import ArtifactWriter\n"
        "w = ArtifactWriter(sys.argv[1], 'extract', 'k').__enter__()\n"
        "w.path('docs.parquet').write_bytes(b'half')\n"
        "print(w.tmp, flush=True); time.sleep(600)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    killed, alive = (Path(p.stdout.readline().strip()) for p in procs)
    try:
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait()
        other = ArtifactWriter(tmp_path, "extract", "other")  # another key: not its business
        with other:
            pass
        assert killed.exists() and alive.exists()
        (killed.parent / ".k.old-1234").mkdir()  # what an install killed mid-replace leaves
        with ArtifactWriter(tmp_path, "extract", "k") as out:
            out.path("docs.parquet").write_bytes(b"whole")
            out.commit(None)
        assert not killed.exists()  # dead writer: swept
        assert not (killed.parent / ".k.old-1234").exists()
        assert alive.exists() and (alive / "docs.parquet").read_bytes() == b"half"  # live: kept
    finally:
        for p in procs:
            p.kill()
            p.wait()
    left = {p.name for p in (tmp_path / "extract").iterdir()}
    assert left == {"k", alive.name}  # the live writer's scratch outlives it only until the next


def test_full_verify_sees_damage_that_keeps_size_and_mtime_and_repair_drops_it(tmp_path, capsys):
    import os

    from fineflow.cli import main
    from fineflow.storage.artifacts import verify_store

    m = _write(tmp_path)
    victim = tmp_path / "demo" / "k1" / "a.txt"
    st = victim.stat()
    victim.write_text("jello")  # same size
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    assert verify(tmp_path, m) is None  # the quick check trusts size + mtime, by design
    assert verify_store(tmp_path) == (1, [("demo/k1", "demo/k1/a.txt: content changed")])
    assert main(["verify", "--set", f"data_root={tmp_path}"]) == 1
    assert "damaged: demo/k1/a.txt: content changed" in capsys.readouterr().out
    assert main(["verify", "--repair", "--set", f"data_root={tmp_path}"]) == 0
    assert not (tmp_path / "demo" / "k1").exists()
    assert verify_store(tmp_path) == (0, [])
