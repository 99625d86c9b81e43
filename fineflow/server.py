"""The Prefect API a run talks to: the configured one, or a local server fineflow starts.

Without PREFECT_API_URL (in the environment or the active Prefect profile), `fineflow run`
needs a local API server, and starting one takes ~5 s (most of it importing Prefect's
server). So the first run starts a **shared** server: a detached process (its own
session: Ctrl-C on a run does not stop it) that later runs find and reuse, and that
stops itself once no run has used it for FINEFLOW_SERVER_IDLE_S seconds (default 600),
or on `fineflow server --stop` (`make ui-stop` runs it). FINEFLOW_SERVER_IDLE_S=0 gives
each run a server of its own, stopped when the run ends (`TemporaryServer`).

A shared server is found through a state file under Prefect's home
(`$PREFECT_HOME/fineflow-server/<identity>.json`): the identity is a digest of what
makes two servers interchangeable (the Prefect version, this Python, Prefect's home, the
PREFECT_* environment and the active profile: the database is among them), so a server
of another Prefect version or database is never found. One that is found is reused only
if it answers its health check and reports this Prefect version; otherwise a new one is
started in its place. Each run holds a shared `flock` on the server's lease file while
it runs; the server stops only when it can take that lock exclusively (no run is using
it, live or crashed: the OS drops a dead process's locks) after the idle period without
a request. Starting is serialised by another lock, so two runs that start together share
one server.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

IDLE_ENV = "FINEFLOW_SERVER_IDLE_S"
DEFAULT_IDLE_S = 600.0
STATE_DIR = "fineflow-server"  # under Prefect's home
# The server's own settings: Prefect's temporary ("ephemeral") server, the UI off.
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1"}
# A run's own settings, not the server's: never part of its identity or environment.
RUN_ONLY = ("PREFECT_API_URL", "PREFECT_LOGGING_CONFIG_PATH", "PREFECT_LOGGING_SETTINGS_PATH")


def _free_port() -> int:
    import socket

    with socket.socket() as s:  # a free port, as Prefect finds one
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _uvicorn_args(port: int) -> list[str]:
    import importlib.util

    prefect_dir = Path(importlib.util.find_spec("prefect").origin).parent  # not imported
    return [
        "--app-dir", str(prefect_dir.parent), "--factory", "prefect.server.api.server:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on",
    ]  # fmt: skip


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
    """(status, body) of a GET on a loopback URL; None if nothing answers."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path)
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return None
    finally:
        conn.close()


def _wait_healthy(api_url: str, process: subprocess.Popen | None, timeout_s: float) -> None:
    """Return once the API answers its health check; raise if the server died first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {process.returncode}")
        got = _get(f"{api_url}/health")
        if got is not None and got[0] == 200:
            return
        time.sleep(0.05)
    raise RuntimeError(f"the Prefect server did not answer within {timeout_s}s")


class TemporaryServer:
    """A local Prefect API server for one run, as Prefect's own SubprocessASGIServer starts
    it (uvicorn over prefect.server.api.server:create_app, the UI off), but launched before
    this process imports Prefect: the server's start (~6 s, most of it importing Prefect's
    server) overlaps this process's imports (~4 s) instead of following them, and this
    process never imports the server's modules (~2 s) only to start another process."""

    reused = False

    def __init__(self) -> None:
        self.port = _free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.exported = False  # whether start_server put api_url into the environment
        env = {**os.environ, **SERVER_ENV, "PREFECT__SERVER_FINAL": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", *_uvicorn_args(self.port)], env=env
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Return once the API answers its health check; raise if the server died."""
        _wait_healthy(self.api_url, self.process, timeout_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except Exception:
                self.process.kill()
                self.process.wait()
        _unexport(self)


def _unexport(server: Any) -> None:
    if server.exported and os.environ.get("PREFECT_API_URL") == server.api_url:
        del os.environ["PREFECT_API_URL"]
        server.exported = False


def idle_seconds() -> float:
    """How long a shared server waits without a request before it stops (0: no sharing)."""
    raw = os.environ.get(IDLE_ENV, "")
    try:
        return max(0.0, float(raw)) if raw.strip() else DEFAULT_IDLE_S
    except ValueError:
        raise SystemExit(f"{IDLE_ENV}={raw!r}: wants a number of seconds") from None


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def _profiles() -> tuple[dict[str, Any], str]:
    """Prefect's profiles file, parsed without importing Prefect, and the active name."""
    import tomllib

    home = prefect_home()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        profiles = {}
    return profiles, os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")


def _active_profile() -> dict[str, Any]:
    profiles, name = _profiles()
    return profiles.get("profiles", {}).get(name, {})


def _profile_api_url() -> str | None:
    """PREFECT_API_URL of the active Prefect profile, read without importing Prefect."""
    return _active_profile().get("PREFECT_API_URL")


def prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def identity() -> dict[str, Any]:
    """What makes two local servers interchangeable for a run started here."""
    return {
        "prefect": prefect_version(),
        "python": sys.executable,
        "home": str(prefect_home().resolve()),
        "env": sorted(
            (k, v) for k, v in os.environ.items() if k.startswith("PREFECT_") and k not in RUN_ONLY
        ),
        "profile": sorted((k, str(v)) for k, v in _active_profile().items()),
    }


def state_dir() -> Path:
    return prefect_home() / STATE_DIR


def _take_lease(path: Path) -> int | None:
    """A shared lock on a server's lease file (the run uses that server), or None if the
    server is stopping (it holds the lock exclusively) or the file is gone."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _answers(state: dict[str, Any]) -> bool:
    """The server of `state` is up, healthy and of this Prefect version."""
    api = state.get("api_url", "")
    health = _get(f"{api}/health")
    if health is None or health[0] != 200:
        return False
    version = _get(f"{api}/admin/version")
    if version is None or version[0] != 200:
        return False
    return json.loads(version[1]) == state.get("prefect")


def _is_ours(pid: int) -> bool:
    """Whether `pid` is a fineflow shared server (not a pid since given to another program)."""
    if Path("/proc/self").is_dir():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            return False
    else:  # no /proc (macOS)
        ps = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True)
        args = ps.stdout.split()
    return "fineflow.server" in args and "serve" in args


def _sweep(leases: Iterator[Path]) -> None:
    """Remove the lease files of servers that died without removing theirs (killed): a
    live server holds a lock on its own, and a run on the one it uses."""
    for path in leases:
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            os.close(fd)


class SharedServer:
    """The run's handle on the shared server: reused (found running) or started now."""

    def __init__(self, idle_s: float) -> None:
        self.exported = False
        self.process: subprocess.Popen | None = None  # only when this run started it
        self.lease: int | None = None
        self._starting: int | None = None  # the start lock, held until the server answers
        ident = identity()
        key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]
        folder = state_dir()
        folder.mkdir(parents=True, exist_ok=True)
        self.state_file = folder / f"{key}.json"
        start = os.open(folder / f"{key}.start", os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(start, fcntl.LOCK_EX)  # one run at a time finds or starts it
        try:
            state = _read_state(self.state_file)
            if state is not None and state.get("identity") == key:
                self.lease = _take_lease(Path(state["lease"]))
                if self.lease is not None and _answers(state):
                    self._use(state, reused=True)
                    return
                self._release()
            self._start(key, ident["prefect"], idle_s)
            self._starting, start = start, -1
        finally:
            if start >= 0:
                os.close(start)

    def _use(self, state: dict[str, Any], reused: bool) -> None:
        self.api_url, self.pid, self.reused = state["api_url"], state["pid"], reused

    def _start(self, key: str, version: str, idle_s: float) -> None:
        port = _free_port()
        folder = self.state_file.parent
        _sweep(folder.glob(f"{key}-*.lease"))
        lease = folder / f"{key}-{port}-{os.urandom(4).hex()}.lease"  # never an old one's
        self.lease = os.open(lease, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.lease, fcntl.LOCK_SH)  # before the server exists: it cannot stop yet
        env = {k: v for k, v in os.environ.items() if k not in RUN_ONLY}
        env.update(SERVER_ENV)
        with open(folder / f"{key}.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fineflow.server", "serve", str(self.state_file),
                 str(lease), str(port), str(idle_s)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,  # not stopped with the run (Ctrl-C, its process group)
            )  # fmt: skip
        state = {
            "identity": key,
            "api_url": f"http://127.0.0.1:{port}/api",
            "pid": self.process.pid,
            "lease": str(lease),
            "prefect": version,
            "idle_s": idle_s,
            "started": time.time(),
        }
        tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)
        self._use(state, reused=False)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Return once the API answers (at once for a reused server); raise if it died."""
        try:
            if not self.reused:
                _wait_healthy(self.api_url, self.process, timeout_s)
        except BaseException:
            self._abandon()
            raise
        finally:
            if self._starting is not None:
                os.close(self._starting)
                self._starting = None

    def _abandon(self) -> None:
        """A server this run started that never answered: stop it and forget it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        state = _read_state(self.state_file)
        if state is not None and state.get("pid") == self.pid:
            self.state_file.unlink(missing_ok=True)

    def _release(self) -> None:
        if self.lease is not None:
            os.close(self.lease)
            self.lease = None

    def stop(self) -> None:
        """The run is done with it: it keeps serving later runs until idle."""
        self._release()
        if self._starting is not None:  # the run ended before waiting for it: let it start
            os.close(self._starting)
            self._starting = None
        _unexport(self)


def configured() -> bool:
    """Whether a Prefect API is configured (the environment or the active profile)."""
    return bool(os.environ.get("PREFECT_API_URL") or _profile_api_url())


def start_server() -> TemporaryServer | SharedServer | None:
    """The run's local server, started (or found) now, unless an API is configured
    (PREFECT_API_URL in the environment or the active Prefect profile). Its URL goes into
    the environment before Prefect is imported, so every thread and process of the run
    uses it: a temporary setting alone leaves Prefect's background threads to start a
    server of their own (Prefect reuses its own temporary server, but not this one)."""
    if configured():
        return None
    idle = idle_seconds()
    try:
        server = SharedServer(idle) if idle > 0 else TemporaryServer()
    except OSError as exc:  # no writable Prefect home to share a server through
        print(f"fineflow: a server of this run's own ({exc})", file=sys.stderr)
        server = TemporaryServer()
    os.environ["PREFECT_API_URL"], server.exported = server.api_url, True
    return server


@contextlib.contextmanager
def prefect_api(server: TemporaryServer | SharedServer | None = None) -> Iterator[None]:
    """The configured Prefect API, or the run's local server for the whole run (`server`,
    if one was started already; else a temporary one).

    Without this, Prefect starts a temporary server in every process-pool worker
    too; one server started here is shared with the workers through PREFECT_API_URL.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    if server is None and PREFECT_API_URL.value():
        yield
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    server = server or TemporaryServer()
    # No flow-run heartbeats: a local (ephemeral) server runs no service that reads them,
    # and each flow run's end waits up to a second for its heartbeat thread to wake.
    local = {PREFECT_API_URL: server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    try:
        server.wait_ready()
        with temporary_settings(local):
            try:
                yield
            finally:
                # Send what is queued while the server still listens, whether the run
                # worked or not; otherwise the workers retry against a closed port for
                # over a minute at exit.
                APILogWorker.drain_all(timeout=5)
                EventsWorker.drain_all(timeout=5)
    finally:
        server.stop()


def running() -> list[dict[str, Any]]:
    """The shared servers under this Prefect home whose process is alive."""
    folder = state_dir()
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        state = _read_state(path)
        if state is not None and _is_ours(int(state.get("pid", 0))):
            found.append({**state, "state_file": str(path)})
    return found


def stop_all(timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Stop every shared server under this Prefect home (SIGTERM, SIGKILL after
    `timeout_s`); runs using one lose their API. Returns the ones stopped."""
    servers = running()
    for s in servers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(s["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for s in servers:
        while _is_ours(s["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _is_ours(s["pid"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(s["pid"], signal.SIGKILL)
        state = _read_state(Path(s["state_file"]))
        if state is not None and state.get("pid") == s["pid"]:
            Path(s["state_file"]).unlink(missing_ok=True)
        Path(s["lease"]).unlink(missing_ok=True)
    return servers


class _LocalApi:
    """ASGI middleware over Prefect's API app: counts requests in flight and notes when the
    last one ended (`_watch`), and retries a request the app answered 503 (SQLite busy:
    "database is locked" when a write meets another writer's transaction) after a few
    milliseconds, up to ~2.5 s, before passing the 503 on. Prefect's clients wait 2 s and
    more before their own retry, which a burst of task-run events at the end of a flow
    made a 2 s stall of the next flow run. The app rolled the request's transaction back,
    so running it again is what the client's retry would do, only sooner."""

    RETRIES = 7  # 0.02 s doubling: 2.5 s in all

    def __init__(self, app: Any) -> None:
        self.app, self.active, self.last = app, 0, time.monotonic()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        self.active += 1
        try:
            if scope["type"] == "http":
                await self._retrying(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            self.active -= 1
            self.last = time.monotonic()

    async def _retrying(self, scope: dict, receive: Any, send: Any) -> None:
        import asyncio

        request = [await receive()]  # the whole request body: small JSON, kept to replay
        while request[-1]["type"] == "http.request" and request[-1].get("more_body"):
            request.append(await receive())
        for attempt in range(self.RETRIES + 1):
            last = attempt == self.RETRIES
            replay, busy = iter(request), [False]

            async def again(replay: Iterator[dict] = replay) -> dict:
                return next(replay, None) or await receive()

            async def forward(message: dict, last: bool = last, busy: list = busy) -> None:
                if message["type"] == "http.response.start":
                    busy[0] = message["status"] == 503 and not last
                if not busy[0]:
                    await send(message)

            try:
                await self.app(dict(scope), again, forward)  # routing rewrites its scope
            except Exception:  # Starlette raises again what its handler answered 503
                if not busy[0]:
                    raise
            if not busy[0]:
                return
            await asyncio.sleep(0.02 * 2**attempt)


def _watch(server: Any, activity: _LocalApi, idle_s: float, fd: int) -> None:
    """Stop the server once idle for `idle_s` with no run holding the lease (`fd`: the
    server's own shared lock on it, made exclusive when it stops)."""
    while not server.should_exit:
        time.sleep(min(5.0, max(idle_s / 4, 0.05)))
        if activity.active or time.monotonic() - activity.last < idle_s:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no run holds it: nobody uses us
        except OSError:
            continue
        server.should_exit = True  # the lock stays held until this process ends


def serve(state_file: Path, lease: Path, port: int, idle_s: float) -> None:
    """The shared server's process: uvicorn over Prefect's API app, stopping itself when
    idle (`_watch`); removes its state file (if it still names it) when it ends."""
    import uvicorn
    from prefect.server.api.server import create_app

    fd = os.open(lease, os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)  # while it lives, nobody takes its lease for a dead one's
    activity = _LocalApi(create_app(final=True))
    config = uvicorn.Config(activity, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    server = uvicorn.Server(config)
    threading.Thread(target=_watch, args=(server, activity, idle_s, fd), daemon=True).start()
    try:
        server.run()
    finally:
        now = _read_state(state_file)
        if now is not None and now.get("pid") == os.getpid():
            state_file.unlink(missing_ok=True)
        lease.unlink(missing_ok=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
