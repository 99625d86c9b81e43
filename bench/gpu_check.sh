#!/usr/bin/env bash
# The GPU session's one call: GPU unit checks, then fineflow's 124M-class training step
# beside the shared plain-GPT-2 reference on the same card. Builds nothing.
#
# Here first:  bash bench/gpu_prepare.sh
# Then:        run(command="bash bench/gpu_check.sh", carry=[".whl", ".ref"], timeout_s=570)
# Writes to $OUT: gpu_unit.json, train_124m_b32.json, train_124m_b64.json,
# gpu_anchor.json (the reference), summary.json (ratio fineflow / reference), log.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
PY=${PY:-python3}

# pydantic from the carried wheels; prefect only for its @task decorator, which the
# measured code never enters: a stand-in when the image has no prefect.
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PY" -c "import prefect" 2>/dev/null; then
  mkdir -p /tmp/shim/prefect
  cat > /tmp/shim/prefect/__init__.py <<'PYEOF'
"""Stand-in for bench/gpu_check.sh: prefect's task decorator as the identity."""
def task(fn=None, **kwargs):
    return fn if fn is not None else (lambda f: f)
PYEOF
  export PYTHONPATH=/tmp/shim:$PYTHONPATH
fi
export PYTHONPATH=$PWD:$PYTHONPATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

status=0
timeout 120 "$PY" bench/gpu_unit.py --json "$OUT/gpu_unit.json" || status=1
for B in 32 64; do
  timeout 140 "$PY" bench/train.py --preset 124m --batch-size $B --steps 30 --log-every 5 \
    --json "$OUT/train_124m_b$B.json" || status=1
done
REF=${REF:-.ref/gpt2_step_reference.py}
if [ -f "$REF" ]; then
  ANCHOR_QUICK=1 OUT=$OUT timeout 150 "$PY" "$REF" || status=1
else
  echo "no reference at $REF: run bench/gpu_prepare.sh here and carry .ref"; status=1
fi

"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
ours = {b: load(f"train_124m_b{b}.json") for b in (32, 64)}
ref = load("gpu_anchor.json") or {}
refs = {r["B"]: r for r in ref.get("runs", []) if r.get("compile") and "tok_per_s" in r}
summary = {"device": (ref or {}).get("device"), "unit": (load("gpu_unit.json") or {}).get("failed")}
for b, r in ours.items():
    if r and b in refs:
        summary[f"B{b}"] = {"fineflow_tok_s": r["tok_per_s"], "reference_tok_s": refs[b]["tok_per_s"],
                           "ratio": round(r["tok_per_s"] / refs[b]["tok_per_s"], 3), "fineflow_mfu": r["mfu"],
                           "fineflow_peak_mem_GB": r["peak_mem_GB"]}
print(json.dumps(summary, indent=1))
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
PYEOF
exit $status
