# The named training runs behind the shipped concepts and the paper's tables. Sourced by
# scripts/train_concepts.sh (CPU, background) and scripts/gpu_train.sh (a GPU machine); needs PY and
# EBM_FAST_CACHE set. `run_spec NAME` sets DATA (data flags), RUN_OUT (run folder), ATTR (recipe
# attribute) and RES (the recipe's resolution: 32, or 64 for the *64 runs meant for a GPU);
# `recipe ATTR [RES]` prints the recipe's flags; `stage1_init RUN_OUT` prints --init-from for the
# run of the first recipe that gives RUN_OUT its starting weights, when that checkpoint exists.

RUN_NAMES="position color shape size table3 continual-position continual-shape continual-color position64 color64 shape64"

recipe() { $PY -c 'import sys; from ebm_fast.paper.concepts import recipe_flags; print(recipe_flags(sys.argv[1], int(sys.argv[2])))' "$1" "${2:-32}"; }

need() {  # a frozen concept an earlier stage must have finished
  [ -f "$1" ] || { echo "$2 needs $1 (finish that run first)" >&2; return 2; }
}

run_spec() {
  RES=32
  case "$1" in
    position|color|shape|size) DATA="--data scenes --cond $1"; RUN_OUT=runs/concepts/${1}32; ATTR=$1 ;;
    position64|color64|shape64)
      ATTR=${1%64}; DATA="--data scenes --cond $ATTR"; RUN_OUT=runs/concepts/$1; RES=64 ;;
    table3)
      local npz=$EBM_FAST_CACHE/table3_train_r32.npz
      [ -f "$npz" ] || $PY -m ebm_fast.cli eval inference --export-train "$npz" --resolution 32 || return 2
      DATA="--data $npz --cond position"; RUN_OUT=runs/concepts/table3_position32; ATTR=position ;;
    continual-position)
      DATA="--data scenes --cond position --shapes box --colors purple"; RUN_OUT=runs/continual/position; ATTR=position ;;
    continual-shape)
      need runs/continual/position/model.pt continual-shape || return 2
      DATA="--data scenes --cond shape --colors purple --frozen runs/continual/position/model.pt=position"
      RUN_OUT=runs/continual/shape; ATTR=shape ;;
    continual-color)
      need runs/continual/shape/model.pt continual-color || return 2
      DATA="--data scenes --cond color --frozen runs/continual/position/model.pt=position runs/continual/shape/model.pt=shape"
      RUN_OUT=runs/continual/color; ATTR=color ;;
    *) echo "unknown run '$1' (one of: $RUN_NAMES)" >&2; return 2 ;;
  esac
}

stage1_init() {
  local stage1
  stage1=runs/stage1/$(echo "$1" | sed 's#^runs/concepts/##; s#^runs/continual/#continual_#')/ckpt/last.pt
  [ -f "$stage1" ] && echo "--init-from $stage1"
  return 0
}
