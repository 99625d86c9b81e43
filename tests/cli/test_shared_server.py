"""The local Prefect server that runs share (fineflow.server): found and reused by the next
run, never when it does not answer or is of another Prefect version or database, stopped
when idle or by `fineflow server --stop`; a 503 of a busy SQLite is retried in the server.

Every wait is for an event (a health check answering, a process ending), with a generous
timeout only as a guard against a hang.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from fineflow import server as local
from fineflow.cli import main
from tests.helpers.cli import fineflow
from tests.helpers.e2e import small_config

GUARD_S = 120  # a hung server fails the test instead of hanging it


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A Prefect home of this module's own (its database, its shared server)."""
    path = tmp_path_factory.mktemp("prefect-home")
    yield path
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_HOME", str(path))
        local.stop_all()


@pytest.fixture
def shared(home, monkeypatch):
    """This process as a run would start: no API configured, sharing allowed."""
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.setenv(local.IDLE_ENV, "600")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(home / "no-profiles.toml"))
    return home


def _run_with(server) -> str:
    """What a run does with the server: wait for it, use it, let it go; its API URL."""
    server.wait_ready(GUARD_S)
    assert os.environ["PREFECT_API_URL"] == server.api_url
    assert local._get(f"{server.api_url}/health")[0] == 200
    server.stop()
    assert "PREFECT_API_URL" not in os.environ
    return server.api_url


def _gone(pid: int) -> None:
    """Wait until the process `pid` has ended (reaped, if it is this process's child)."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # started by an earlier test's run: not ours to reap
        deadline = time.monotonic() + GUARD_S
        while local._is_ours(pid):
            assert time.monotonic() < deadline, f"pid {pid} still running"
            time.sleep(0.05)


def test_the_next_run_reuses_the_server_the_first_one_started(shared):
    local.stop_all()
    first = local.start_server()
    assert isinstance(first, local.SharedServer) and not first.reused
    url = _run_with(first)
    assert first.process.poll() is None  # the run ended, the server did not
    again = local.start_server()
    assert again.reused and again.api_url == url and again.pid == first.pid
    _run_with(again)


def test_a_server_that_does_not_answer_is_replaced(shared):
    old = local.start_server()
    _run_with(old)
    lease = Path(json.loads(old.state_file.read_text())["lease"])
    os.kill(old.pid, signal.SIGKILL)  # dead, its state and lease files left behind
    _gone(old.pid)
    assert lease.exists()
    fresh = local.start_server()
    assert not fresh.reused and fresh.pid != old.pid
    assert not lease.exists()  # swept: nobody held it
    _run_with(fresh)


def test_a_server_of_another_prefect_version_is_not_reused(shared):
    old = local.start_server()
    _run_with(old)
    said = json.loads(old.state_file.read_text())
    old.state_file.write_text(json.dumps({**said, "prefect": "0.0.1"}))  # as if it were
    other = local.start_server()
    assert not other.reused and other.pid != old.pid
    _run_with(other)
    os.kill(old.pid, signal.SIGTERM)  # no longer named by a state file: stop it here
    _gone(old.pid)


def test_what_makes_servers_interchangeable(shared, monkeypatch):
    base = local.identity()
    monkeypatch.setenv("PREFECT_LOGGING_CONFIG_PATH", "/elsewhere/logging.yml")  # per run
    assert local.identity() == base
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "sqlite+aiosqlite:///other.db")
    assert local.identity() != base
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL")
    monkeypatch.setattr(local, "prefect_version", lambda: "0.0.1")
    assert local.identity() != base


def test_fineflow_server_says_where_it_is_and_stops_it(shared, capsys):
    _run_with(local.start_server())
    (state,) = local.running()
    assert main(["server"]) == 0
    said = capsys.readouterr().out
    assert f"shared Prefect server at {state['api_url']} (pid {state['pid']};" in said
    assert main(["server", "--stop"]) == 0
    assert f"stopped the shared Prefect server at {state['api_url']}" in capsys.readouterr().out
    assert local.running() == [] and not Path(state["state_file"]).exists()
    _gone(state["pid"])
    assert main(["server"]) == 0
    assert "no shared Prefect server is running" in capsys.readouterr().out


def test_an_idle_server_that_no_run_holds_stops_itself(shared, monkeypatch):
    local.stop_all()
    monkeypatch.setenv(local.IDLE_ENV, "0.2")
    server = local.start_server()
    assert not server.reused
    _run_with(server)  # lets go of its lease
    assert server.process.wait(timeout=GUARD_S) == 0
    assert local.running() == [] and not server.state_file.exists()


def test_a_request_sqlite_was_too_busy_for_is_answered_by_a_retry():
    """The app answers 503 (and raises, as Starlette does after its handler answered) twice,
    then 200: the client sees one 200, and the app saw the same body three times."""
    seen: list[bytes] = []

    async def app(scope, receive, send):
        assert scope["path"] == "/api/task_runs/"
        scope["path"] = "/task_runs/"  # routing rewrites the scope it is given
        seen.append((await receive())["body"])
        status = 503 if len(seen) < 3 else 201
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        if status == 503:
            raise RuntimeError("database is locked")

    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b'{"name": "x"}', "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/api/task_runs/", "method": "POST"}
    asyncio.run(local._LocalApi(app)(scope, receive, send))
    assert seen == [b'{"name": "x"}'] * 3
    assert [m.get("status") for m in sent] == [201, None]


def test_two_cli_runs_share_one_server_and_a_cached_rerun_needs_no_process_pool(
    warcs, tmp_path, home
):
    """The CLI as a user runs it, twice: the second run finds the first one's server (the
    same API address in its log lines) and, everything being cached, runs its per-WARC
    stages on threads, each one still Cached in the summary."""
    cfg = small_config(tmp_path / "data", warcs[:2], stop_after="dedup")
    path = tmp_path / "cfg.json"
    path.write_text(cfg.model_dump_json())
    env = {**os.environ, "PREFECT_HOME": str(home), local.IDLE_ENV: "600"}
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_PROFILES_PATH"] = str(home / "no-profiles.toml")
    runs = [fineflow("run", "--config", str(path), env=env) for _ in range(2)]
    for rc, out in runs:
        assert rc == 0, out[-3000:]
    urls = [set(re.findall(r"View at (http://127\.0\.0\.1:\d+)/", out)) for _, out in runs]
    assert len(urls[0]) == 1 and urls[0] == urls[1]
    first, second = (out.split("\nfineflow: ", 1)[1] for _, out in runs)
    assert "6 stages, 6 ran, 0 cached" in first and "6 stages, 0 ran, 6 cached" in second
    logs = sorted((tmp_path / "data" / "_logs").glob("run-*.log"))
    said = "every per-WARC task run is cached: they run on threads, no process pool"
    assert [said in log.read_text() for log in logs] == [False, True]
    rc, out = fineflow("server", "--stop", env=env)
    assert rc == 0 and f"stopped the shared Prefect server at {urls[0].pop()}/api" in out
