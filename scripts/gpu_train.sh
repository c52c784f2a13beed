#!/usr/bin/env bash
# Training runs on a GPU machine in time-limited runs of a few minutes each, resumed run after run.
#
# On the CPU machine (it has MuJoCo to render the data; no trainer may be running there):
#   bash scripts/gpu_train.sh prepare color position      # data_cache/ + gpu_carry/ (what each run needs)
# copy gpu_carry/ and data_cache/ into the repository on the GPU machine (runs/ need not go), run there
#   OUT=/tmp/gpu_out bash scripts/gpu_train.sh train 8 color position   # several runs share the GPU
# copy $OUT back, then on the CPU machine
#   bash scripts/gpu_train.sh unpack DIR                  # new checkpoints and logs into runs/ (never over a newer one)
#
# `train MINUTES RUN...` (on the GPU machine) trains each run with --device cuda --resume --max-minutes, so
# each stops at a checkpoint within MINUTES plus one checkpoint interval, and writes one
# $OUT/<run>.tgz per run: ckpt/last.pt, config.json, log.jsonl, the newest negatives, model.pt if the
# run finished. Run names are scripts/runs.sh's. Then it judges the run's exports (--export-every) alone
# from noise, JUDGE_N samples each (default 128; 0: off; `ebm-fast eval models`), and packs
# models/judged.json and the best model so far, so the best survives from one run to the next.
set -euo pipefail
cd "$(dirname "$0")/.."
export EBM_FAST_CACHE=$PWD/data_cache OMP_WAIT_POLICY=PASSIVE MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONUNBUFFERED=1
CARRY=gpu_carry
cmd=${1:-}; shift || true

pack_run() {  # pack_run RUN_DIR TGZ: what a continued run needs, nothing older
  local dir=$1 tgz=$2 newest best files=()
  newest=$(ls -1 "$dir"/samples/neg_*.png 2>/dev/null | tail -n 1 || true)
  best=$("$PY" -c 'import sys; from ebm_fast.paper.eval_models import best_export as b; print(b(sys.argv[1]) or "")' \
    "$dir" 2>/dev/null || true)
  for f in "$dir"/config.json "$dir"/log.jsonl "$dir"/ckpt/last.pt "$dir"/model.pt $newest \
           "$dir"/models/judged.json $best; do
    [ -f "$f" ] && files+=("$f")
  done
  tar czf "$tgz" "${files[@]}"
}

case "$cmd" in
  prepare)
    PY=.venv/bin/python
    # shellcheck source=scripts/runs.sh
    . scripts/runs.sh
    rm -rf "$CARRY"; mkdir -p "$CARRY" data_cache
    for name in "$@"; do
      run_spec "$name"
      init=$(stage1_init "$RUN_OUT")
      # render (or find) the run's data now: the device has no MuJoCo
      # shellcheck disable=SC2086
      $PY -c 'import sys, ebm_fast.paper.training_data; from ebm_fast.training import config_from_args, load_data; load_data(config_from_args(sys.argv[1:]))' \
        $DATA $(recipe "$ATTR" "$RES") $init --out "$RUN_OUT" --resume
      if [ -d "$RUN_OUT" ]; then pack_run "$RUN_OUT" "$CARRY/$name.tgz"; fi
      for f in ${init#--init-from } $(echo "$DATA" | grep -o 'runs/[^ =]*model\.pt' || true); do
        if [ -f "$f" ]; then tar rf "$CARRY/extra.tar" "$f"; fi   # starting weights, frozen concepts
      done
    done
    du -sh "$CARRY" data_cache
    echo "next: copy $CARRY/ and data_cache/ to the GPU machine and run there: bash scripts/gpu_train.sh train MINUTES $*"
    ;;
  train)
    minutes=${1:?train: MINUTES RUN...}; shift
    PY=${PYTHON:-python3}
    OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
    # shellcheck source=scripts/runs.sh
    . scripts/runs.sh
    for t in "$CARRY"/*.tgz; do if [ -f "$t" ]; then tar xzf "$t"; fi; done
    if [ -f "$CARRY/extra.tar" ]; then tar xf "$CARRY/extra.tar"; fi
    { nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"; } | tee "$OUT/train.log"
    jobs_=()
    for name in "$@"; do
      run_spec "$name"
      mkdir -p "$RUN_OUT"
      # shellcheck disable=SC2086
      $PY -m ebm_fast.cli train $DATA $(recipe "$ATTR" "$RES") $(stage1_init "$RUN_OUT") ${EXTRA:-} --device "${DEVICE:-cuda}" \
        --threads 2 --no-progress --out "$RUN_OUT" --resume --max-minutes "$minutes" > "$RUN_OUT.out" 2>&1 &
      jobs_+=("$!:$name:$RUN_OUT:$ATTR")
    done
    for j in "${jobs_[@]}"; do
      IFS=: read -r pid name dir attr <<< "$j"
      if wait "$pid"; then rc=0; else rc=$?; fi
      { echo "== $name: exit $rc"; tail -n 5 "$dir.out"; tail -n 2 "$dir/log.jsonl" 2>/dev/null || true; } | tee -a "$OUT/train.log"
      if [ "${JUDGE_N:-128}" -gt 0 ] && [ "$attr" != size ] && compgen -G "$dir/models/model_*.pt" > /dev/null; then
        { $PY -m ebm_fast.cli eval models "$dir" --rows "$attr" --n "${JUDGE_N:-128}" --device "${DEVICE:-cuda}" 2>&1 \
            || echo "judging $dir failed"; } | tail -n 40 | tee -a "$OUT/train.log"
      fi
      pack_run "$dir" "$OUT/$name.tgz"
    done
    ;;
  unpack)
    src=${1:?unpack: the folder holding the .tgz files that train wrote to its OUT}
    step() { .venv/bin/python -c 'import sys; from ebm_fast.checkpoint import load_checkpoint_file as f; print(f(sys.argv[1])["step"])' "$1"; }
    for t in "$src"/*.tgz; do
      ckpt=$(tar tzf "$t" | grep '/ckpt/last.pt$' || true)
      if [ -n "$ckpt" ] && [ -f "$ckpt" ] && [ -z "${FORCE:-}" ]; then  # never replace a newer local checkpoint
        tmp=$(mktemp -d); tar xzf "$t" -C "$tmp" "$ckpt"
        new=$(step "$tmp/$ckpt"); old=$(step "$ckpt"); rm -rf "$tmp"
        if [ "$new" -le "$old" ]; then
          echo "skipped $t: its checkpoint (step $new) is not newer than $ckpt (step $old); FORCE=1 overrides"
          continue
        fi
      fi
      tar xzf "$t"; echo "unpacked $t into $(dirname "$(dirname "$ckpt")")"
    done
    ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
