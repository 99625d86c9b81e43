#!/usr/bin/env bash
# Run HERE (the dev box, which reaches PyPI) before bench/gpu_check.sh goes to a GPU machine.
#
# The GPU image has python3 3.12 with torch, numpy, tokenizers, matplotlib, pytest, but
# not pydantic (fineflow.config) and not prefect (which the GPU checks do not import).
# This puts pydantic's wheels, at the versions of this venv, in .whl/ (with
# typing_extensions: pydantic-core needs a newer one than the image may hold) and a
# copy of the shared GPT-2 step reference in .ref/, both git-ignored, to be carried:
#   run(command="bash bench/gpu_check.sh", carry=[".whl", ".ref"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
grep -qx '/.ref/' .git/info/exclude 2>/dev/null || echo '/.ref/' >> .git/info/exclude
PY=${PY:-.venv/bin/python}
pins=$("$PY" -c "
import importlib.metadata as m
names = ('pydantic', 'pydantic-core', 'annotated-types', 'typing-inspection', 'typing-extensions')
print(' '.join(f'{n}=={m.version(n)}' for n in names))")
rm -rf .whl && mkdir -p .whl .ref  # one version of each, or the install on the GPU fails
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl $pins
cp -f /work/shared/reference/gpt2_step_reference.py .ref/
ls -la .whl .ref
