#!/usr/bin/env bash
# The paradigms on `shapes`: trains each named run (after its tokenizer, once), then measures all of them
# (512 samples: judge accuracy, judge-space FID, sampling time) and prints the README's paradigm table.
#   bash scripts/shapes_continuous.sh [name ...]   (default: mar acdit flowar xar)
# Names: mar | mar_flow (MAR with the flow-matching head instead of the DDPM one) | mar_learned (MAR with the paper's
# learned absolute positions instead of 2D RoPE) | acdit | flowar | xar (2x2 cells) |
# xar_<entity> (token, cell, subsample, scale, image) | var | nt.
# Tokenizers: runs/vae (KL-VAE: mar, acdit, flowar, xar*), runs/msvq (var), runs/vq (nt); each is trained only if
# its DONE file is missing. A finished run is resumed at its last step, i.e. skipped.
# Environment: RUNS (output folder, default runs); STEPS_MUL=2 trains 2x the config's steps into <name>_2x;
# ARJAX_NO_INSTALL=1 uses the current python as is (e.g. a GPU machine with JAX_PLATFORMS=cuda) instead of
# scripts/_env.sh (which pip-installs arjax and defaults JAX_PLATFORMS to cpu); PYTHON names it (default python).
if [ -n "${ARJAX_NO_INSTALL:-}" ]; then
  set -euo pipefail
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
else
  source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
fi
runs="${RUNS:-runs}"
py="${PYTHON:-python}"
mul="${STEPS_MUL:-1}"
[ $# -gt 0 ] || set -- mar acdit flowar xar

train() {  # train WORKDIR CONFIG [overrides...]: the command is kept in WORKDIR/command.txt for the table
  local workdir=$1; shift
  mkdir -p "$workdir"
  local cmd="$py -m arjax.main --config $* --workdir $workdir"
  echo "$cmd" > "$workdir/command.txt"
  echo "== $cmd" >&2
  $cmd
  touch "$workdir/DONE"
}

tokenizer() {  # tokenizer NAME: trains configs/shapes/NAME.py into $runs/NAME unless it is DONE
  [ -f "$runs/$1/DONE" ] || train "$runs/$1" "configs/shapes/$1.py"
}

workdirs=()
for name in "$@"; do
  case "$name" in
    mar | acdit | flowar) config="configs/shapes/$name.py"; tok=vae; extra=() ;;
    mar_flow) config=configs/shapes/mar.py; tok=vae; extra=(--config.model.head.kind=flow) ;;
    mar_learned) config=configs/shapes/mar.py; tok=vae
      extra=(--config.model.encoder.pos=learned --config.model.decoder.pos=learned) ;;
    xar) config=configs/shapes/xar.py; tok=vae; extra=() ;;
    xar_token | xar_cell | xar_subsample | xar_scale | xar_image)
      config=configs/shapes/xar.py; tok=vae; extra=("--config.model.entity=${name#xar_}") ;;
    var) config=configs/shapes/var.py; tok=msvq; extra=() ;;
    nt) config=configs/shapes/next_token.py; tok=vq; extra=() ;;  # (no in-training judge to turn off)
    *) echo "unknown run name '$name' (mar mar_flow mar_learned acdit flowar xar xar_<entity> var nt)" >&2; exit 2 ;;
  esac
  tokenizer "$tok"
  workdir="$runs/$name"
  if [ "$mul" != 1 ]; then
    steps=$($py -c "from arjax import config; print(config.load_config('$config').train.steps * $mul)")
    workdir="$runs/${name}_${mul}x"
    extra+=("--config.train.steps=$steps")
  fi
  # the in-training judge is off: paradigm_table.py --measure judges the final EMA params once (with FID and timing)
  [ "$name" = nt ] || extra+=("--config.evals.judge.every=0")
  train "$workdir" "$config" "--config.tokenizer.workdir=$runs/$tok" "${extra[@]}"
  $py scripts/paradigm_table.py --measure "$workdir"  # DIR/table.json, right away (a later stop keeps it)
  workdirs+=("$workdir")
done
vae=(); [ ! -f "$runs/vae/DONE" ] || vae=(--vae "$runs/vae")
$py scripts/paradigm_table.py --measure "${vae[@]}" "${workdirs[@]}"
