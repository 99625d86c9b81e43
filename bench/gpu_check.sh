#!/usr/bin/env bash
# The GPU session's one call: fineflow's 124M-class training step beside the shared
# plain-GPT-2 reference on the same card, then the GPU unit checks. Builds nothing.
#
# Here first:  bash bench/gpu_prepare.sh
# Then:        run(command="bash bench/gpu_check.sh", carry=[".whl", ".ref"], timeout_s=540)
# Expected about 5 minutes (each run compiles its model: ~1 min), at most 8 (the
# timeouts below), so a 15-minute lease has room for the machine's start and a rerun.
# Writes to $OUT: train_124m_b32.json, train_124m_b64.json, gpu_anchor.json (the
# reference), gpu_unit.json (written after each check), summary.json (fineflow /
# reference), log.txt. A step that fails or times out is recorded and the rest still run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
PY=${PY:-python3}

# pydantic (fineflow.config) from the carried wheels. Nothing here imports prefect or
# the data stages: the trainer is fineflow/training.
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
# Fail in seconds, not after the first compile, if the carried wheels are missing.
"$PY" -c "import fineflow.config, fineflow.training.loop, torch; assert torch.cuda.is_available()" \
  || { echo "setup failed: carry .whl (bash bench/gpu_prepare.sh) and run on a CUDA machine"; exit 1; }

status=0
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
timeout 120 "$PY" bench/gpu_unit.py --json "$OUT/gpu_unit.json" || status=1

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
unit = load("gpu_unit.json") or {}
summary = {"device": ref.get("device"), "unit_failed": unit.get("failed", "not run to the end")}
for b, r in ours.items():
    if r and b in refs:
        ratio = r["tok_per_s"] / refs[b]["tok_per_s"]
        summary[f"B{b}"] = {"fineflow_tok_s": r["tok_per_s"], "reference_tok_s": refs[b]["tok_per_s"],
                           "ratio": round(ratio, 3), "goal_1.1x_met": ratio >= 1.1,
                           "fineflow_mfu": r["mfu"], "fineflow_peak_mem_GB": r["peak_mem_GB"]}
print(json.dumps(summary, indent=1))
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
PYEOF
exit $status
