"""SIGKILL the real `fineflow run` at chosen moments, rerun it, and get the same result.

House rule: a killed run never leaves an artifact that a later run trusts, and training
resumes from its last checkpoint. The CLI runs as a subprocess in its own process group
(its process-pool and extraction workers with it). No moment is waited for by the clock
or caught by polling the data root (a quick stage, or a loaded machine, would slip past
it): every Python process of a killed run imports a `sitecustomize` that watches its own
file operations (an audit hook, `_stop_at_the_kill_point`) and, at the moment asked for
(a stage's scratch directory `.<key>.tmp-*` in place, a new training checkpoint in
place, a checkpoint's temporary file open), writes a marker file and stops itself with
SIGSTOP. The test waits for the marker, stops the whole group, records what is on disk
at that instant (which artifacts are committed, which are half written, which
checkpoints exist: where the kill landed), then SIGKILLs the group and starts the run
again. After the last kill the run finishes, and its artifacts are compared with those
of an uninterrupted run of the same configuration on another data root.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fineflow.config import STAGES
from fineflow.storage.artifacts import MANIFEST_NAME, Manifest, verify
from fineflow.storage.layout import work_dir
from tests.helpers.e2e import small_config

pytestmark = pytest.mark.slow

POLL_S = 0.02  # how often the test looks for the marker (the run is frozen meanwhile)
RUN_TIMEOUT_S = 300  # a guard against a hung run, never a kill point
TRAIN = {
    # Longer than small_config's 12 steps so that a kill lands between checkpoints with
    # a wide margin: 60 steps of a 1-layer, 32-wide GPT take well under a second on CPU.
    "steps": 60,
    "checkpoint_every": 15,
    "keep_checkpoints": 2,
    "log_every": 5,
}
# what the terminal of `fineflow run` says (through Prefect's run logger) when it resumes
RESUMED = re.compile(r"train: resumed from step (\d+) of (\d+) \(ckpt_(\d+)\.pt\)")
KILL_AT, KILL_MARK = "FINEFLOW_TEST_KILL_AT", "FINEFLOW_TEST_KILL_MARK"

Snapshot = dict[str, dict[str, list[str]]]  # stage -> {"committed", "tmp", "ckpts", ...: names}


def _special(d: Path) -> bool:
    """The data root's own directories, not a stage's: `_prefect` (results), `_logs`."""
    return d.name.startswith("_")


def snapshot(root: Path) -> Snapshot:
    """What each stage directory holds right now."""
    out: Snapshot = {}
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir() and not _special(p)):
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


def _stop_at_the_kill_point() -> None:
    """The kill points, run at the start of every Python process of a killed run (copied
    into its `sitecustomize`; stdlib only, self-contained).

    $FINEFLOW_TEST_KILL_AT is `KIND:DIR`. An audit hook sees the process's renames and
    opens; at the first event after the moment KIND (its path then exists) in the thread
    that made it (another thread's might come while that one is past the moment, inside
    its next rename) it writes $FINEFLOW_TEST_KILL_MARK ({"pid", "thread", "event",
    "path"}) and stops the process (SIGSTOP):
    - scratch: a stage's `.<key>.tmp-*` directory renamed into place in DIR (the stage),
      before anything is committed from it;
    - checkpoint: a `ckpt_*.pt` renamed into place in a work dir under DIR (train);
    - checkpoint_tmp: a checkpoint's `.ckpt_*.pt.tmp-*` opened for writing there.
    """
    import _thread
    import json
    import os
    import re
    import signal
    import sys

    spec, mark = os.environ.get("FINEFLOW_TEST_KILL_AT"), os.environ.get("FINEFLOW_TEST_KILL_MARK")
    if not spec or not mark:
        return
    kind, _, where = spec.partition(":")
    where = os.path.realpath(where)
    names = {
        "scratch": (r"\..+\.tmp-[0-9a-f]+", 1, "os.rename", 1),
        "checkpoint": (r"ckpt_\d+\.pt", 2, "os.rename", 1),
        "checkpoint_tmp": (r"\.ckpt_\d+\.pt\.tmp-[0-9a-f]+", 2, "open", 0),
    }
    pattern, depth, watched, arg = names[kind]  # depth: levels from the file up to DIR
    state: dict = {"pending": None, "thread": None}
    busy: set[int] = set()  # threads inside the hook: its own file operations raise events

    def aimed_at(path: object) -> bool:
        if not isinstance(path, (str, os.PathLike)):
            return False  # an fd
        path = os.fspath(path)
        if isinstance(path, bytes) or not re.fullmatch(pattern, os.path.basename(path)):
            return False
        up = path
        for _ in range(depth):
            up = os.path.dirname(os.path.abspath(up))
        return os.path.realpath(up) == where

    def stop(event: str, path: str) -> None:
        tmp = f"{mark}.part"
        with open(tmp, "w") as f:
            json.dump(
                {"pid": os.getpid(), "thread": state["thread"], "event": event, "path": path}, f
            )
        os.rename(tmp, mark)
        # Frozen at the moment; the test kills it. Sent to this thread: a signal sent to the
        # process reaches the main thread first, and this one (a task runner's) would carry
        # on into its rename before the group stop caught up with it.
        signal.pthread_kill(_thread.get_ident(), signal.SIGSTOP)

    def hook(event: str, args: tuple) -> None:
        me = _thread.get_ident()
        if me in busy or (state["pending"] is None and event != watched):
            return
        busy.add(me)
        try:
            if state["pending"] is not None:
                if state["thread"] == me and os.path.lexists(state["pending"]):
                    stop(event, state["pending"])
            elif (
                len(args) > arg
                and aimed_at(args[arg])
                and (event != "open" or "w" in str(args[1] or ""))
            ):
                state["pending"] = os.fspath(args[arg])  # raised before the syscall
                state["thread"] = me
        except Exception:
            pass  # never break the run under test
        finally:
            busy.discard(me)

    sys.addaudithook(hook)


@dataclass(frozen=True)
class KillPoint:
    moment: str  # "inside <stage>[, ...]"
    kind: str  # _stop_at_the_kill_point's KIND
    stage: str

    def env(self, root: Path, mark: Path) -> dict[str, str]:
        return {KILL_AT: f"{self.kind}:{root / self.stage}", KILL_MARK: str(mark)}


def kill_hook_dir(base: Path) -> Path:
    """A directory holding the `sitecustomize` that every process of a killed run imports."""
    d = base / "kill-hook"
    d.mkdir(exist_ok=True)
    source = textwrap.dedent(inspect.getsource(_stop_at_the_kill_point))
    (d / "sitecustomize.py").write_text(
        f"# written by tests/cli/test_kill.py\n{source}\n\n_stop_at_the_kill_point()\n"
    )
    return d


# Each killed run stops at its moment; the next run starts where the last one was killed.
KILLS: list[KillPoint] = [
    KillPoint("inside download", "scratch", "download"),
    KillPoint("inside extract", "scratch", "extract"),
    KillPoint("inside dedup", "scratch", "dedup"),
    KillPoint("inside shard", "scratch", "shard"),
    KillPoint("inside train, after a new checkpoint", "checkpoint", "train"),
    # the resumed run killed again, while it writes its next checkpoint: its temporary
    # file (half written, or written and not yet renamed) is not resumed from, the newest
    # whole checkpoint is
    KillPoint("inside train, writing a checkpoint", "checkpoint_tmp", "train"),
    KillPoint("inside evaluate", "scratch", "evaluate"),
]


@dataclass
class Run:
    rc: int | None  # None: killed
    output: str
    seconds: float
    moment: str = ""
    at_kill: Snapshot = field(default_factory=dict)
    at_start: Snapshot = field(default_factory=dict)
    stopped: dict[str, object] = field(default_factory=dict)  # the marker: pid, event, path


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
    until: KillPoint | None = None,
) -> Run:
    """`fineflow COMMAND --config cfg_path`; with `until`, SIGKILLed at that moment."""
    root = Path(json.loads(cfg_path.read_text())["data_root"])
    start = snapshot(root) if root.is_dir() else {}
    mark = log.with_suffix(".stopped.json")
    mark.unlink(missing_ok=True)
    if until is not None:
        env = {**env, **until.env(root, mark)}
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
            while True:
                try:
                    proc.wait(timeout=POLL_S)
                    break  # it ended by itself
                except subprocess.TimeoutExpired:
                    pass
                if until is not None and mark.exists():  # one process is frozen at the moment
                    os.killpg(proc.pid, signal.SIGSTOP)  # and now all of them: look
                    at_kill = snapshot(root)
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    assert _group_gone(proc.pid), "a process of the killed run survived"
                    return Run(
                        None,
                        log.read_text(),
                        time.monotonic() - t0,
                        until.moment,
                        at_kill,
                        start,
                        json.loads(mark.read_text()),
                    )
                if time.monotonic() - t0 > RUN_TIMEOUT_S:
                    raise TimeoutError(f"fineflow {command} ran past {RUN_TIMEOUT_S}s")
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
        if not stage_dir.is_dir() or _special(stage_dir):
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
    hook = kill_hook_dir(base)
    env = {
        **os.environ,
        # the session's test server: no temporary server started per run (~8 s each)
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        # every process of a run (spawned pool workers too) imports the kill hook, which
        # does nothing unless FINEFLOW_TEST_KILL_AT is set
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
    }
    env.pop(KILL_AT, None)
    env.pop(KILL_MARK, None)
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
        assert run.rc is None, f"run {i} ended ({run.rc}) before {moment.moment}:\n{run.output}"
        killed.append(run)
    last = fineflow("run", cfg_path, env, base / "last.log")
    reference = fineflow("run", configs["reference"][1], env, base / "reference.log")
    status = fineflow("status", cfg_path, env, base / "status.log")
    for i, run in enumerate(killed):
        stopped = f"{run.stopped['event']} {Path(str(run.stopped['path'])).name}"
        print(f"kill {i} ({run.moment}) after {run.seconds:.1f}s at {stopped}: {landing(run)}")
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
    (training: with a checkpoint on disk and no model committed yet), at the very file
    the kill point names: the scratch directory, the new checkpoint, the temporary file."""
    final = committed(runs["cfg"].data_root)
    for run, point in zip(runs["killed"], KILLS, strict=True):
        name = Path(str(run.stopped["path"])).name
        entry = run.at_kill[point.stage]
        where = {"scratch": "tmp", "checkpoint": "ckpts", "checkpoint_tmp": "ckpt_tmp"}
        before = run.at_start.get(point.stage, {}).get(where[point.kind], [])
        assert name in entry[where[point.kind]] and name not in before, (run.moment, name)
        if point.stage == "train":
            assert entry["ckpts"] and not entry["committed"], (run.moment, landing(run))
        else:
            assert len(entry["committed"]) < len(final[point.stage]), (run.moment, landing(run))


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
        if not stage_dir.is_dir() or _special(stage_dir):
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
        found = RESUMED.findall(nxt.output)  # the terminal's output, at the default levels
        assert found, nxt.output
        assert {tuple(map(int, f)) for f in found} == {(newest, TRAIN["steps"], newest)}
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
