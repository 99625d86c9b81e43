"""Progress reporting into the Prefect UI from inside a stage, and nothing outside a run.

Stages call `Progress(...)` around long loops (bytes downloaded, documents extracted,
training steps). Inside a Prefect task run it keeps one progress artifact up to date;
in a plain function call (unit tests, `task.fn(...)`) it does nothing. Updates are
throttled so a tight loop does not flood the API.
"""

from __future__ import annotations

import logging
import time
from uuid import UUID

log = logging.getLogger("fineflow.progress")


def in_prefect_run() -> bool:
    from prefect.context import TaskRunContext

    return TaskRunContext.get() is not None


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
