"""Errors a user can act on: what failed, in words, and what to do about it.

A `FineflowError` carries the reason (one sentence, no traceback), a hint (the next
step), and where it happened (stage, WARC, path) when known. The CLI prints it as one
short block (`describe`), the run summary lists per-WARC ones, and the full traceback
goes only to the log file. Raise it, or a subclass, wherever the cause is known; any
other exception reaching the CLI is shown the same way with its type as the reason.

It pickles with all its fields (Prefect carries task exceptions across processes).
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class FineflowError(Exception):
    """A failure explained: `reason` says what went wrong, `hint` what to do."""

    def __init__(
        self,
        reason: str,
        *,
        hint: str = "",
        stage: str | None = None,
        warc: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason, self.hint = reason, hint
        self.stage, self.warc, self.path = stage, warc, path

    def __reduce__(self):  # keyword fields survive pickling (Exception's default drops them)
        return _rebuild, (type(self), self.reason, self.__dict__.copy())

    def __str__(self) -> str:
        return self.reason


def _rebuild(cls: type[FineflowError], reason: str, fields: dict) -> FineflowError:
    err = cls.__new__(cls)
    Exception.__init__(err, reason)
    err.__dict__.update(fields)
    return err


def disk_full(exc: OSError, path: Path | str, stage: str | None = None) -> FineflowError:
    """ENOSPC (or EDQUOT) while writing `path`, as a FineflowError naming the free space."""
    target = Path(path)
    probe = next((p for p in (target, *target.parents) if p.exists()), Path("."))
    try:
        free = f"{shutil.disk_usage(probe).free / 1e6:,.0f} MB free"
    except OSError:
        free = "free space unknown"
    return FineflowError(
        f"disk full while writing {target} ({free} on that file system)",
        hint="free space there, or point data_root at a larger disk, then run again: "
        "what finished stays cached",
        stage=stage,
        path=str(target),
    )


def is_disk_full(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError in `exc` or its cause chain, if there is one."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return cur
        if "No space left on device" in str(cur) or "unexpected pos" in str(cur):
            # torch.save's C++ writer reports ENOSPC as "[enforce fail ...] unexpected pos"
            return OSError(errno.ENOSPC, "No space left on device")
        cur = cur.__cause__ or cur.__context__
    return None
