#!/usr/bin/env bash
# Continuous-token paradigms on `shapes`: trains the KL-VAE once, then MAR, ACDiT, FlowAR and xAR
# over it (each judged on 512 samples at its last step), and prints the README's table.
# Outputs under ${RUNS:-runs}/; a finished run is resumed at its last step, i.e. skipped.
# Usage: bash scripts/shapes_continuous.sh [paradigm ...]   (default: mar acdit flowar xar)
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
runs="${RUNS:-runs}"
paradigms=("${@:-mar acdit flowar xar}")
python -m arjax.main --config configs/shapes/vae.py --workdir "$runs/vae"
workdirs=()
for p in ${paradigms[@]}; do
  python -m arjax.main --config "configs/shapes/$p.py" --workdir "$runs/$p" --config.tokenizer.workdir="$runs/vae"
  workdirs+=("$runs/$p")
done
python scripts/paradigm_table.py --vae "$runs/vae" "${workdirs[@]}"
