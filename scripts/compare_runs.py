"""Do two data roots hold the same results? Stage by stage: content fingerprints and counts.

    .venv/bin/python scripts/compare_runs.py DATA_ROOT_A DATA_ROOT_B

For a refactor that must not change behaviour: run the same config from the code before
and after into two data roots, then compare. Artifacts are matched by (stage, WARC), not
by key (a key includes the code, so it differs); the script prints each stage's
fingerprints and counts side by side and exits 1 if any differ. Train losses are compared
through the train manifest's stats.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Stats that depend on the machine, the clock or where a file was read from, not on what
# was computed.
VOLATILE = {"seconds", "tokens_per_s", "elapsed_s", "wall_s", "mfu", "encoder", "source_uri"}


def artifacts(root: Path) -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted(root.glob("*/*/manifest.json")):
        if path.parent.name.startswith((".", "_")) or path.parent.parent.name.startswith("_"):
            continue
        m = json.loads(path.read_text())
        out[(m["stage"], m.get("warc") or "-")] = m
    return out


def main(a: str, b: str) -> int:
    left, right = artifacts(Path(a)), artifacts(Path(b))
    differ = 0
    for where in sorted(set(left) | set(right)):
        x, y = left.get(where), right.get(where)
        if x is None or y is None:
            print(f"{where}: only in {'B' if x is None else 'A'}")
            differ += 1
            continue
        stats = {k: v for k, v in x["stats"].items() if k not in VOLATILE}
        other = {k: v for k, v in y["stats"].items() if k not in VOLATILE}
        same = x["fingerprint"] == y["fingerprint"] and x["counts"] == y["counts"]
        same = same and stats == other
        differ += not same
        verdict = "same" if same else "DIFFERS"
        print(f"{verdict:<8} {where[0]:<11} {where[1]:<58} {x['fingerprint'][:16]}")
        if not same:
            for k in sorted(set(x["counts"]) | set(y["counts"])):
                if x["counts"].get(k) != y["counts"].get(k):
                    print(f"         counts.{k}: {x['counts'].get(k)} vs {y['counts'].get(k)}")
            for k in sorted(set(stats) | set(other)):
                if stats.get(k) != other.get(k):
                    print(f"         stats.{k}: {stats.get(k)} vs {other.get(k)}")
    print(f"{len(left)} vs {len(right)} artifacts, {differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
