#!/usr/bin/env bash
# Run HERE (the dev box, which reaches PyPI) before bench/gpu_check.sh goes to a GPU machine.
#
# The GPU image has python3 3.12 with torch, numpy, tokenizers, matplotlib, pytest, but
# not pydantic (fineflow.config) and not prefect. This puts pydantic's wheels in .whl/
# and a copy of the shared GPT-2 step reference in .ref/, both git-ignored through
# .git/info/exclude, to be carried:
#   run(command="bash bench/gpu_check.sh", carry=[".whl", ".ref"], timeout_s=570)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
grep -qx '/.ref/' .git/info/exclude 2>/dev/null || echo '/.ref/' >> .git/info/exclude
mkdir -p .whl .ref
PY=${PY:-.venv/bin/python}
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
cp /work/shared/reference/gpt2_step_reference.py .ref/
ls -la .whl .ref
