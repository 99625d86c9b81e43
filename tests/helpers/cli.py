"""`fineflow` run as a user runs it: a subprocess of this interpreter's `fineflow.cli`."""

from __future__ import annotations

import subprocess
import sys


def fineflow(*args: str, env: dict[str, str], timeout: float = 600) -> tuple[int, str]:
    """`fineflow ARGS`; (exit status, stdout and stderr as one stream)."""
    done = subprocess.run(
        [sys.executable, "-m", "fineflow.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=timeout,
    )
    return done.returncode, done.stdout
