#!/usr/bin/env bash
# Starts, or resumes where it stopped, each named training run behind the shipped concepts and the
# paper's tables: in the background, niced, one thread each, surviving the shell (setsid). Every run
# uses the one recipe in ebm_fast/paper/concepts.py (recipe_flags). A run's folder OUT gets log.jsonl,
# samples/ (negatives), ckpt/ and, at the end, model.pt; its stdout goes to OUT.out. Safe to re-run:
# a run already going is skipped.
#
#   bash scripts/train_concepts.sh position color shape       # Table 1 and the demo's concepts
#   bash scripts/train_concepts.sh table3                     # Table 3's position EBM
#   bash scripts/train_concepts.sh continual-position         # Table 2, in order: -position, -shape, -color
#
# EXTRA="--step-size 100" bash scripts/train_concepts.sh color   # flags after the recipe's override it
#   bash scripts/train_concepts.sh status                     # where every run stands (ebm_fast.run_status)
# A finished run leaves model.pt in its folder; docs/training.md says how to judge and ship it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export EBM_FAST_CACHE=${EBM_FAST_CACHE:-$PWD/data_cache} OMP_WAIT_POLICY=PASSIVE MUJOCO_GL=${MUJOCO_GL:-egl}
# shellcheck source=scripts/runs.sh
. scripts/runs.sh
mkdir -p runs/concepts

if [ "${1:-}" = status ]; then  # where every run stands: step, speed, energies, cond_acc, newest negatives
  exec $PY -m ebm_fast.run_status runs/concepts/*/ runs/continual/*/
fi

for name in "$@"; do
  run_spec "$name" || exit 2
  data=$DATA out=$RUN_OUT attr=$ATTR res=$RES
  if pgrep -f -- "--out $out( |\$)" > /dev/null; then
    echo "$name: already running ($out)"; continue
  fi
  mkdir -p "$(dirname "$out")"
  # A run of the first recipe (runs/stage1/, the paper's loss alone) gives a new run its starting weights.
  init=$(stage1_init "$out")
  # shellcheck disable=SC2086  # the recipe is a list of flags
  setsid nohup nice -n 19 $PY -m ebm_fast.cli train $data $(recipe "$attr" "$res") $init ${EXTRA:-} --threads 1 --no-progress --out "$out" --resume \
    >> "$out.out" 2>&1 < /dev/null &
  echo "$name: started in the background -> $out"
done
