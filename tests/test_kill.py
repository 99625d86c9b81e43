"""SIGKILL the real `fineflow run` at chosen moments, rerun it, and get the same result.

House rule: a killed run never leaves an artifact that a later run trusts, and training
resumes from its last checkpoint. The CLI runs as a subprocess in its own process group
(its process-pool and extraction workers with it). A watcher polls the data root; when
the moment it waits for comes (a stage's first `.tmp-*` directory, a new training
checkpoint), it stops the whole group with SIGSTOP, records what is on disk at that
instant (which artifacts are committed, which are half written, which checkpoints exist:
where the kill landed), then SIGKILLs the group and starts the run again. After the
last kill the run finishes, and its artifacts are compared with those of an
uninterrupted run of the same configuration on another data root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from e2e import small_config

from fineflow.config import STAGES
from storage.artifacts import MANIFEST_NAME, Manifest, verify
from storage.layout import work_dir

pytestmark = pytest.mark.slow

POLL_S = 0.003
RUN_TIMEOUT_S = 300
TRAIN = {
    # Longer than small_config's 12 steps so that a kill lands between checkpoints with
    # a wide margin: 60 steps of a 1-layer, 32-wide GPT take well under a second on CPU.
    "steps": 60,
    "checkpoint_every": 15,
    "keep_checkpoints": 2,
    "log_every": 5,
}
RESUMED = re.compile(r"resuming from \S*ckpt_(\d+)\.pt at step (\d+)")

Snapshot = dict[str, dict[str, list[str]]]  # stage -> {"committed", "tmp", "ckpts", ...: names}


def snapshot(root: Path) -> Snapshot:
    """What each stage directory holds right now."""
    out: Snapshot = {}
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "_prefect"):
        entry: dict[str, list[str]] = {"committed": [], "tmp": [], "ckpts": [], "ckpt_tmp": []}
        for d in sorted(stage_dir.iterdir()):
            if ".tmp-" in d.name:
                entry["tmp"].append(d.name)
            elif d.name.endswith(".work"):
                entry["ckpts"] += [p.name for p in sorted(d.glob("ckpt_*.pt"))]
                entry["ckpt_tmp"] += [p.name for p in sorted(d.glob(".ckpt_*.tmp-*"))]
            elif not d.name.startswith(".") and (d / MANIFEST_NAME).is_file():
                entry["committed"].append(d.name)
        out[stage_dir.name] = entry
    return out


def _names(root: Path, stage: str, pattern: str) -> set[str]:
    d = root / stage
    return {p.name for p in d.glob(pattern)} if d.is_dir() else set()


def new_tmp_dir(stage: str) -> Callable[[Path, Snapshot], bool]:
    """True once a `.tmp-*` directory that was not there at the start appears under `stage`."""

    def hit(root: Path, start: Snapshot) -> bool:
        old = set(start.get(stage, {}).get("tmp", []))
        return bool(_names(root, stage, ".*.tmp-*") - old)

    hit.__name__ = f"inside {stage}"
    return hit


def new_checkpoint(root: Path, start: Snapshot) -> bool:
    """True once training wrote a checkpoint that was not there at the start."""
    old = set(start.get("train", {}).get("ckpts", []))
    d = root / "train"
    have = {p.name for p in d.glob(".*.work/ckpt_*.pt")} if d.is_dir() else set()
    return bool(have - old)


new_checkpoint.__name__ = "inside train, after a new checkpoint"


def checkpoint_being_written(root: Path, start: Snapshot) -> bool:
    """True once training starts writing a checkpoint (its temporary file appears),
    or, if that moment was missed, once a new checkpoint is there."""
    old = set(start.get("train", {}).get("ckpt_tmp", []))
    d = root / "train"
    writing = {p.name for p in d.glob(".*.work/.ckpt_*.tmp-*")} if d.is_dir() else set()
    return bool(writing - old) or new_checkpoint(root, start)


checkpoint_being_written.__name__ = "inside train, writing a checkpoint"

# Each killed run waits for its moment; the next run starts where the last one was killed.
KILLS: list[Callable[[Path, Snapshot], bool]] = [
    new_tmp_dir("download"),
    new_tmp_dir("extract"),
    new_tmp_dir("dedup"),
    new_tmp_dir("shard"),
    new_checkpoint,
    # the resumed run killed again, while it writes its next checkpoint: the half-written
    # file is not resumed from, the newest whole one is
    checkpoint_being_written,
    new_tmp_dir("evaluate"),
]


@dataclass
class Run:
    rc: int | None  # None: killed
    output: str
    seconds: float
    moment: str = ""
    at_kill: Snapshot = field(default_factory=dict)
    at_start: Snapshot = field(default_factory=dict)


def _group_gone(pgid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def fineflow(
    command: str,
    cfg_path: Path,
    env: dict[str, str],
    log: Path,
    until: Callable[[Path, Snapshot], bool] | None = None,
) -> Run:
    """`fineflow COMMAND --config cfg_path`; with `until`, SIGKILLed when it comes true."""
    root = Path(json.loads(cfg_path.read_text())["data_root"])
    start = snapshot(root) if root.is_dir() else {}
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fineflow.cli", command, "--config", str(cfg_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: workers die with it
        )
        try:
            while proc.poll() is None:
                if until is not None and root.is_dir() and until(root, start):
                    os.killpg(proc.pid, signal.SIGSTOP)  # freeze the moment, then look
                    at_kill = snapshot(root)
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    assert _group_gone(proc.pid), "a process of the killed run survived"
                    return Run(
                        None,
                        log.read_text(),
                        time.monotonic() - t0,
                        until.__name__,
                        at_kill,
                        start,
                    )
                if time.monotonic() - t0 > RUN_TIMEOUT_S:
                    raise TimeoutError(f"fineflow {command} ran past {RUN_TIMEOUT_S}s")
                time.sleep(POLL_S)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return Run(proc.returncode, log.read_text(), time.monotonic() - t0, at_start=start)


def landing(run: Run) -> str:
    """What was being written when `run` was killed (directories it had started)."""
    parts = []
    for stage, entry in run.at_kill.items():
        before = run.at_start.get(stage, {})
        new = sorted(set(entry["tmp"]) - set(before.get("tmp", [])))
        new += sorted(set(entry["ckpt_tmp"]) - set(before.get("ckpt_tmp", [])))
        if new:
            parts.append(f"{stage}: {', '.join(new)}")
        if entry["ckpts"]:
            parts.append(f"{stage} checkpoints: {', '.join(entry['ckpts'])}")
    return "; ".join(parts) or "no writer open"


def committed(root: Path) -> dict[str, set[tuple[str, str | None, str]]]:
    """stage -> {(key, warc, content fingerprint)} of every artifact under its final name."""
    out: dict[str, set[tuple[str, str | None, str]]] = {}
    for stage_dir in root.iterdir():
        if not stage_dir.is_dir() or stage_dir.name == "_prefect":
            continue
        for d in stage_dir.iterdir():
            if d.name.startswith(".") or not d.is_dir():
                continue
            m = Manifest.model_validate_json((d / MANIFEST_NAME).read_text())
            out.setdefault(stage_dir.name, set()).add((m.key, m.warc, m.fingerprint))
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(prefect_server, warcs, tmp_path_factory):
    """The killed-and-restarted runs, the last run, and an uninterrupted reference run."""
    from prefect.settings import PREFECT_API_URL

    base = tmp_path_factory.mktemp("kill")
    env = {
        **os.environ,
        # the session's test server: no temporary server started per run (~8 s each)
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        # fineflow's INFO lines (training's "resuming from ...") reach the run's output
        "PREFECT_LOGGING_ROOT_LEVEL": "INFO",
    }
    configs = {}
    for name in ("killed", "reference"):
        cfg = small_config(base / name, warcs[:2], train=TRAIN)
        path = base / f"{name}.json"
        path.write_text(json.dumps(cfg.model_dump(mode="json")))
        configs[name] = (cfg, path)

    cfg_path = configs["killed"][1]
    killed = []
    for i, moment in enumerate(KILLS):
        run = fineflow("run", cfg_path, env, base / f"killed-{i}.log", until=moment)
        assert run.rc is None, f"run {i} ended ({run.rc}) before {moment.__name__}:\n{run.output}"
        killed.append(run)
    last = fineflow("run", cfg_path, env, base / "last.log")
    reference = fineflow("run", configs["reference"][1], env, base / "reference.log")
    status = fineflow("status", cfg_path, env, base / "status.log")
    for i, run in enumerate(killed):
        print(f"kill {i} ({run.moment}) after {run.seconds:.1f}s: {landing(run)}")
    print(f"last run {last.seconds:.1f}s, reference {reference.seconds:.1f}s")
    return {
        "killed": killed,
        "last": last,
        "reference": reference,
        "status": status,
        "cfg": configs["killed"][0],
        "ref_cfg": configs["reference"][0],
    }


def test_every_kill_landed_inside_the_stage_it_aimed_at(runs):
    """Each kill came after its stage began writing and before it had finished
    (training: with a checkpoint on disk and no model committed yet)."""
    final = committed(runs["cfg"].data_root)
    for run in runs["killed"]:
        if run.moment.startswith("inside train"):
            train = run.at_kill["train"]
            assert train["ckpts"] and not train["committed"], (run.moment, landing(run))
        else:
            stage = run.moment.removeprefix("inside ")
            done = len(run.at_kill[stage]["committed"])
            assert done < len(final[stage]), (run.moment, landing(run))


def test_after_the_kills_the_run_finishes_and_equals_an_uninterrupted_one(runs):
    last, reference = runs["last"], runs["reference"]
    assert last.rc == 0, last.output
    assert reference.rc == 0, reference.output
    got, want = committed(runs["cfg"].data_root), committed(runs["ref_cfg"].data_root)
    assert set(STAGES) <= set(want)
    assert got == want  # same keys, same content fingerprints, no extra artifact


def test_trained_weights_are_bitwise_those_of_the_uninterrupted_run(runs):
    paths = []
    for cfg in (runs["cfg"], runs["ref_cfg"]):
        (d,) = [p for p in (cfg.data_root / "train").iterdir() if not p.name.startswith(".")]
        m = Manifest.model_validate_json((d / MANIFEST_NAME).read_text())
        (entry,) = [f for f in m.files if f.path == "model.pt"]
        assert sha256(d / "model.pt") == entry.sha256
        paths.append(d)
    assert sha256(paths[0] / "model.pt") == sha256(paths[1] / "model.pt")
    assert (paths[0] / "metrics.json").read_text() == (paths[1] / "metrics.json").read_text()


def test_every_artifact_under_its_final_name_is_whole(runs):
    """Nothing half-written got a final name: every file hashes to its manifest's entry."""
    root = runs["cfg"].data_root
    seen = 0
    for stage_dir in root.iterdir():
        if not stage_dir.is_dir() or stage_dir.name == "_prefect":
            continue
        for d in stage_dir.iterdir():
            if d.name.startswith("."):
                continue
            m = Manifest.model_validate_json((d / MANIFEST_NAME).read_text())
            assert verify(root, m) is None
            on_disk = {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}
            assert on_disk - {MANIFEST_NAME, ".verified.json"} == {f.path for f in m.files}
            for f in m.files:  # full hashes: verify may trust a (size, mtime) seen before
                assert sha256(d / f.path) == f.sha256, f"{m.dir}/{f.path}"
            seen += 1
    assert seen >= len(STAGES)


def test_status_reads_every_stage_cached(runs):
    status = runs["status"]
    assert status.rc == 0, status.output
    lines = status.output.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("stage")) + 1
    got = {ln.split()[0]: ln.split()[1] for ln in lines[start : start + len(STAGES)]}
    assert got == {s: "cached" for s in STAGES}, status.output


def test_training_resumed_from_the_checkpoint_the_kill_left(runs):
    """The run after each kill inside training says it resumed from the newest checkpoint."""
    after = [*runs["killed"][1:], runs["last"]]
    resumed = 0
    for run, nxt in zip(runs["killed"], after, strict=True):
        if not run.moment.startswith("inside train"):
            continue
        newest = max(int(n[len("ckpt_") : -len(".pt")]) for n in run.at_kill["train"]["ckpts"])
        found = RESUMED.findall(nxt.output)
        assert found, nxt.output
        assert {(int(a), int(b)) for a, b in found} == {(newest, newest)}
        resumed += 1
    assert resumed == 2
    cfg = runs["cfg"]
    (train,) = committed(cfg.data_root)["train"]
    assert not work_dir(cfg.data_root, "train", train[0]).exists()  # removed once committed


def test_a_killed_writers_tmp_directory_is_removed_by_the_next_writer(runs):
    root = runs["cfg"].data_root
    left = {
        (stage, name)
        for run in runs["killed"]
        for stage, entry in run.at_kill.items()
        for name in entry["tmp"]
    }
    if not left:
        pytest.skip("no kill landed inside an artifact writer")
    remaining = {(s, n) for s, n in left if (root / s / n).exists()}
    assert not remaining, sorted(remaining)
