#!/usr/bin/env bash
# One run on a CUDA machine: build and install the package (`pip install --no-build-isolation .`),
# run the CUDA tests, then the GPU benchmarks, writing logs and pytest-benchmark JSON under $OUT.
#
#   OUT=/tmp/gpu bash scripts/gpu_session.sh [build] [editable] [tests] [bench] [sanitize] [suite] [demo]
#   (default: all but editable, which build includes, and demo; editable alone skips the wheel install;
#   demo runs the main job, `ebm-fast demo`, on the GPU and keeps its report and grids in $OUT/demo)
#
# Every stage runs under its own time limit and the script goes on after a failing stage, so one run
# returns as much as it can. The installed extension is also copied next to the in-tree package, so the
# tests and benchmarks, run from the repository root, import an editable build of the same tree.
# Stage logs go to $OUT/logs.tgz (the last lines of each also into $OUT/summary.log).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
STAGES=${*:-build tests bench sanitize suite}
LOG="$OUT/summary.log"
LOGS=$(mktemp -d)/gpu_logs; mkdir -p "$LOGS"
say() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
run() {  # run LIMIT_S NAME CMD...: one stage, its output into $LOGS/NAME.log, its tail into the summary log
  local limit=$1 name=$2; shift 2
  say "$name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$LOGS/$name.log" >> "$LOG"
  tar czf "$OUT/logs.tgz" -C "$(dirname "$LOGS")" "$(basename "$LOGS")"
  say "$name: exit $rc after $((SECONDS - t0)) s"
  return $rc
}
has() { [[ " $STAGES " == *" $1 "* ]]; }

say "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))"
  nvcc --version | tail -n 2; nproc; } 2>&1 | tee -a "$LOG"

if has build; then
  run 400 build $PY -m pip install --no-build-isolation --no-deps -v . || { say "build failed"; exit 1; }
  (cd /tmp && $PY -c "import ebm_fast._C as C; print('installed _C:', C.__file__, 'has_cuda', C.has_cuda)") 2>&1 | tee -a "$LOG"
fi
if has build || has editable; then
  # the tests import the tree they run in: an editable install builds _C in place and maps ebm_fast.kernels
  run 400 build_editable $PY -m pip install --no-build-isolation --no-deps -e . || { say "editable build failed"; exit 1; }
  $PY -c "import ebm_fast._C as C, ebm_fast.kernels.langevin_step as K; from ebm_fast.ops import available_backends as a
print('in-tree _C:', C.__file__, 'has_cuda', C.has_cuda, 'backends on cuda:', a('cuda'))" 2>&1 | tee -a "$LOG"
fi
if has tests; then
  run 300 cuda_tests $PY -m pytest -m cuda tests/ -p no:cacheprovider -q -rs --durations=10
fi
if has bench; then
  run 200 bench_langevin_step $PY -m pytest benchmarks/bench_langevin_step.py -k cuda --benchmark-only \
    -p no:cacheprovider --benchmark-json="$OUT/langevin_step_gpu.json" --benchmark-columns=median,rounds
  run 200 bench_infer $PY -m pytest benchmarks/bench_infer.py --benchmark-only -p no:cacheprovider \
    --benchmark-json="$OUT/infer_gpu.json" --benchmark-columns=median,rounds
  run 300 bench_train $PY -m pytest benchmarks/bench_train.py --benchmark-only -p no:cacheprovider \
    --benchmark-json="$OUT/train_gpu.json" --benchmark-columns=median,rounds
  EBM_FAST_BENCH_COMPILE=${EBM_FAST_BENCH_COMPILE:-0} run 300 bench_sampler $PY -m pytest benchmarks/bench_sampler.py --benchmark-only -p no:cacheprovider \
    --benchmark-json="$OUT/sampler_gpu.json" --benchmark-columns=median,rounds
fi
if has sanitize; then
  run 120 sanitize compute-sanitizer --tool memcheck --error-exitcode 3 $PY -m pytest -p no:cacheprovider -q \
    tests/test_langevin_step.py -k "cuda and (images_strided or small_dimension or large_programs)"
fi
if has suite; then
  run 300 suite $PY -m pytest -m "not slow" tests/ -p no:cacheprovider -q -rf  # ~3.5-4 min there
fi
if has demo; then
  run 300 demo bash -c "time $PY -m ebm_fast.cli demo --out '$OUT/demo'"
fi
say "done"
