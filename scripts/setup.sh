#!/usr/bin/env bash
# Sets up ./.venv with everything ebm_fast needs on a CPU machine and builds the package in place.
# Idempotent: re-running reuses what is installed and only rebuilds the extension. Override the
# interpreter with PYTHON=...; extras beyond test and scenes with EXTRAS=test,scenes,docs.
# Each stage is announced; the full output of the extension build goes to .venv/setup-build.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-test,scenes}
STAGES=5
T0=$SECONDS
stage() { printf '\n==> [%d/%d] %s  (%d s so far)\n' "$1" "$STAGES" "$2" "$((SECONDS - T0))"; }

stage 1 "Python environment in .venv"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  echo "created .venv ($(.venv/bin/python --version))"
else
  echo "reusing .venv ($(.venv/bin/python --version))"
fi
PIP=(.venv/bin/python -m pip)
"${PIP[@]}" install -q --upgrade pip

# torch is pinned: a plain `torch` would pull a multi-GB CUDA build on a CPU machine.
stage 2 "PyTorch 2.13.0 and Triton 3.6.0 (the largest download: a few minutes on a fresh .venv)"
"${PIP[@]}" install "torch==2.13.0" "triton==3.6.0"

# build tools first: the editable build below runs without isolation (no network needed for it)
stage 3 "build tools: setuptools, wheel, pybind11, cmake, ninja"
"${PIP[@]}" install setuptools wheel "pybind11>=2.12" cmake ninja

stage 4 "ebm_fast[$EXTRAS] in editable mode, building the C++/CUDA extension ebm_fast._C"
echo "    (CMake + ninja: ~30 s for the CPU kernel on 2 cores, ~70 s when nvcc is found and the CUDA"
echo "     kernel is compiled too; compiler steps are shown as [i/n], the full log is .venv/setup-build.log)"
LOG=.venv/setup-build.log
# -v makes pip show the CMake and ninja output; only the progress lines reach the terminal
if ! "${PIP[@]}" install -v --no-build-isolation -e ".[$EXTRAS]" 2>&1 | tee "$LOG" | {
       grep --line-buffered -E '^ *\[[0-9]+/[0-9]+\] |-- ebm_fast|^Collecting |^Successfully' || true; }
then
  echo "setup.sh: installing ebm_fast failed. The errors in $LOG:" >&2
  grep -i -E '(^|[^-])error[: ]|FAILED:' "$LOG" | head -n 20 >&2 || true
  echo "setup.sh: its last lines:" >&2
  tail -n 15 "$LOG" >&2
  exit 1
fi

stage 5 "check: import ebm_fast and its extension"
.venv/bin/python -c "import ebm_fast, ebm_fast._C as C; print('ebm_fast', ebm_fast.__version__, '- extension built, CUDA kernel compiled:', C.has_cuda)"
echo "setup.sh: done in $((SECONDS - T0)) s"
