"""Safe single file names from input text, and the check that a path stays inside its root.

Input text (a URL's last segment after URL-decoding, a WARC-Filename, a record id) can
hold anything: `/`, `\\`, `..`, NUL, control characters, 10 KB of them. `safe_name`
maps it to one name that is always a plain file name on every file system we write to:

- only ASCII letters, digits and `._-+=@,` survive; every other character becomes `_`;
- no leading dot (no hidden files, no `.` / `..`), never empty;
- at most `MAX_NAME` (120) characters, the extension kept;
- when anything had to change, `-<8 hex of sha256(original)>` is added before the
  extension, so two different originals never map to one name (`a/b.warc.gz` and
  `a\\b.warc.gz` stay apart) and a name that needed no change stays exactly as it was.

`inside(root, path)` resolves both (symlinks and `..` included) and raises
`PathEscape` if `path` is not under `root`: the artifact store calls it on every write.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-+=@,]")
_EXT = re.compile(r"(\.[A-Za-z0-9]{1,8}){1,2}$")  # ".warc.gz", ".tar.gz", ".txt"


class PathEscape(ValueError):
    """A path that would resolve outside the directory it must stay in."""


def safe_name(text: str, *, default: str = "file") -> str:
    """`text` as one safe file name (unchanged when it already is one); see the module doc."""
    clean = _UNSAFE.sub("_", text)
    if clean == text and not text.startswith(".") and 0 < len(text) <= MAX_NAME:
        return text
    tag = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    m = _EXT.search(clean)
    ext = m.group(0) if m and m.start() > 0 else ""
    stem = clean[: len(clean) - len(ext)].strip("._") or default
    stem = stem[: MAX_NAME - len(ext) - len(tag) - 1]
    return f"{stem}-{tag}{ext}"


def inside(root: Path, path: Path) -> Path:
    """`path` resolved, if it lies under `root` (resolved too); PathEscape otherwise."""
    base = Path(root).resolve()
    resolved = (base / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    if resolved != base and base not in resolved.parents:
        raise PathEscape(f"refused to write {path}: it resolves to {resolved}, outside {base}")
    return resolved
