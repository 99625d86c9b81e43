"""Progress from inside a stage: lines for the user, and a progress bar in the Prefect UI.

`tell(message)` is a line for the user, not only for the log file: the terminal of
`fineflow run` shows fineflow's own loggers from WARNING up only (fineflow.logs), so
inside a Prefect task run the line goes through Prefect's run logger, which reaches
the terminal, the task's log in the UI and the run's log file; outside a run it is an
INFO record of the given logger (the log file). The line carries `fineflow_progress`,
so `fineflow run --quiet` keeps it out of the terminal (fineflow.logs.QuietFilter)
while the UI and the log file still get it.

`Ticker` paces such lines: one when `every_s` seconds (4 by default) have passed since
it started or last spoke, and any forced one (a training run's first and last step, a
WARC's closing rate), so a long stage says what it is doing and a short one stays
silent, without flooding the screen.

`Progress(...)` keeps one 0-100 progress artifact up to date inside a task run and
does nothing in a plain function call (unit tests, `task.fn(...)`); its updates are
throttled so a tight loop does not flood the API.
"""

from __future__ import annotations

import logging
import time
from uuid import UUID

log = logging.getLogger("fineflow.progress")
PROGRESS_EVERY_S = 4.0  # the least time between two progress lines of one loop
PROGRESS_FLAG = "fineflow_progress"  # set on every record `tell` makes (QuietFilter)


def in_prefect_run() -> bool:
    from prefect.context import TaskRunContext

    return TaskRunContext.get() is not None


def tell(message: str, logger: logging.Logger = log) -> None:
    """A progress line for the user (module docstring): the task's run log, else `logger`."""
    try:
        inside = in_prefect_run()
    except ImportError:  # the trainer alone, on a bare GPU box
        inside = False
    if inside:
        from prefect.logging import get_run_logger

        get_run_logger().info(message, extra={PROGRESS_FLAG: True})
    else:
        logger.info(message, extra={PROGRESS_FLAG: True})


class Ticker:
    """Says a line once `every_s` seconds have passed since the start or the last line."""

    def __init__(self, logger: logging.Logger = log, every_s: float = PROGRESS_EVERY_S) -> None:
        self.logger, self.every_s = logger, every_s
        self.started = self._last = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def say(self, message: str, force: bool = False) -> bool:
        """`tell` the line if it is due (or forced); whether it was said."""
        if not (force or self.due()):
            return False
        self._last = time.monotonic()
        tell(message, self.logger)
        return True


class Progress:
    """A 0-100 progress artifact for one task run; `update(done, total)` as work goes."""

    def __init__(self, description: str, every_s: float = 2.0) -> None:
        self.description = description
        self.every_s = every_s
        self._id: UUID | None = None
        self._last = 0.0
        if in_prefect_run():
            from prefect.artifacts import create_progress_artifact

            try:
                self._id = create_progress_artifact(0.0, description=description)
            except Exception as exc:  # the UI is a view: never fail a stage over it
                log.warning("no progress artifact for %s: %s", description, exc)

    def update(self, done: float, total: float, force: bool = False) -> None:
        if self._id is None or total <= 0:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        from prefect.artifacts import update_progress_artifact

        try:
            update_progress_artifact(self._id, min(100.0, 100.0 * done / total))
        except Exception as exc:
            log.warning("progress update failed for %s: %s", self.description, exc)

    def done(self) -> None:
        self.update(1, 1, force=True)
