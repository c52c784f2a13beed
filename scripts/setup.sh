#!/usr/bin/env bash
# Sets up ./.venv with everything ebm_fast needs on a CPU machine and builds the package in place.
# Idempotent: re-running only rebuilds the extension. Override the interpreter with PYTHON=...
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# torch is pinned: a plain `torch` would pull a multi-GB CUDA build on a CPU machine.
$PIP install -q "torch==2.13.0" "triton==3.6.0"
# build tools first: the editable build below runs without isolation (no network needed for it)
$PIP install -q setuptools wheel "pybind11>=2.12" cmake ninja
$PIP install -q --no-build-isolation -e ".[test,scenes]"
.venv/bin/python -c "import ebm_fast, ebm_fast._C as C; print('ebm_fast', ebm_fast.__version__, '- extension built, CUDA kernel compiled:', C.has_cuda)"
