#!/usr/bin/env bash
# Sets up ./.venv (scripts/setup.sh) and runs the default test suite (slow tests excluded).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` or `bash scripts/test.sh -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Triton runs through its interpreter on machines without a GPU; it must be set before triton loads.
export TRITON_INTERPRET=1 MUJOCO_GL=egl
exec .venv/bin/python -m pytest -m "not slow" "$@"
