"""Where a run's log goes: everything to `<data_root>/_logs/run-<time>-<pid>.log`, the
terminal kept short.

`setup(root, debug)` runs before Prefect is imported: it writes a Prefect logging
config (Prefect's own `logging.yml`, changed in three places) and points
PREFECT_LOGGING_CONFIG_PATH at it, so the process-pool workers, which inherit the
environment, log the same way:

- a file handler on the root logger takes every record at DEBUG and up, tracebacks
  included, from every process of the run (appended line by line);
- the terminal's handler prints records without their tracebacks (`--debug` keeps
  them): a failed task is one line there, and the CLI's closing block says what to do;
- `fineflow.*` loggers log INFO to the file, and WARNING and up to the terminal;
- progress lines (fineflow.progress.tell: training steps, extraction rates) reach the
  terminal through Prefect's run logger, unless `--quiet` (FINEFLOW_QUIET) keeps them
  to the UI and the file.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

from fineflow.progress import PROGRESS_FLAG
from fineflow.storage import layout

DEBUG_ENV = "FINEFLOW_DEBUG"
QUIET_ENV = "FINEFLOW_QUIET"


def prefect_default_config() -> Path:
    """Prefect's bundled logging.yml, found without importing Prefect."""
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.submodule_search_locations, "prefect is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "logging" / "logging.yml"


def setup(root: Path, debug: bool = False, quiet: bool = False) -> Path:
    """Route this run's logs (see the module doc); returns the log file's path."""
    import yaml

    logs = layout.logs_dir(Path(root)).resolve()
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_file = logs / f"run-{stamp}-{os.getpid()}.log"
    spec = yaml.safe_load(prefect_default_config().read_text())
    standard = spec["formatters"]["standard"]
    spec["formatters"]["fineflow_console"] = {**standard, "()": f"{__name__}.console_formatter"}
    spec["formatters"]["fineflow_file"] = {
        "format": "%(asctime)s %(levelname)-7s %(processName)s %(name)s - %(message)s"
    }
    spec.setdefault("filters", {})["fineflow_quiet"] = {"()": f"{__name__}.QuietFilter"}
    spec["handlers"]["console"]["formatter"] = "fineflow_console"
    spec["handlers"]["console"]["filters"] = ["fineflow_quiet"]
    spec["handlers"]["fineflow_file"] = {
        "class": "logging.FileHandler",
        "level": 0,
        "formatter": "fineflow_file",
        "filename": str(log_file).replace("$", "$$"),  # Prefect templates this file
        "delay": True,
    }
    spec["root"]["handlers"] = [*spec["root"]["handlers"], "fineflow_file"]
    spec["loggers"]["fineflow"] = {"level": "INFO"}
    for name in ("prefect._internal", "prefect.extra"):  # they do not reach the root
        spec["loggers"][name]["handlers"] = [*spec["loggers"][name]["handlers"], "fineflow_file"]
    settings = logs / f".logging-{os.getpid()}.yml"
    settings.write_text(yaml.safe_dump(spec, sort_keys=False))
    for var in ("PREFECT_LOGGING_CONFIG_PATH", "PREFECT_LOGGING_SETTINGS_PATH"):  # new, old name
        os.environ[var] = str(settings)
    os.environ[DEBUG_ENV] = "1" if debug else ""
    os.environ[QUIET_ENV] = "1" if quiet else ""  # the process-pool workers inherit it
    return log_file


def forget(log_file: Path) -> None:
    """Remove the run's generated logging config (the log itself stays)."""
    Path(log_file).parent.joinpath(f".logging-{os.getpid()}.yml").unlink(missing_ok=True)


def console_formatter(**kwargs: str) -> logging.Formatter:
    """Prefect's console format, without tracebacks unless FINEFLOW_DEBUG is set.

    A factory (dictConfig's "()"), so that importing this module never imports Prefect:
    Prefect reads its settings, this file's path among them, when first imported."""
    from prefect.logging.formatters import PrefectFormatter

    class ConsoleFormatter(PrefectFormatter):
        def format(self, record: logging.LogRecord) -> str:
            if os.environ.get(DEBUG_ENV) or not record.exc_info:
                return super().format(record)
            saved = record.exc_info, record.exc_text, record.stack_info
            record.exc_info = record.exc_text = record.stack_info = None
            try:
                return super().format(record)
            finally:
                record.exc_info, record.exc_text, record.stack_info = saved

    return ConsoleFormatter(**kwargs)


class QuietFilter(logging.Filter):
    """The terminal shows fineflow's own loggers from WARNING up (the file has them all),
    and progress lines unless FINEFLOW_QUIET is set."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, PROGRESS_FLAG, False) and os.environ.get(QUIET_ENV):
            return False
        if record.name.startswith("fineflow") and record.levelno < logging.WARNING:
            return bool(os.environ.get(DEBUG_ENV))
        return True
