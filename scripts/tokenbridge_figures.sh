#!/usr/bin/env bash
# TokenBridge figures (docs/tokenbridge.md): the KL-VAE (trained unless $RUNS/vae/DONE exists), then four runs of one
# MAR backbone, steps and data, in parallel: TokenBridge with the data-derived and with the identity channel order,
# MAR with the diffusion and with the flow head (each judged on 512 samples at its last step); then the
# reconstruction table and the judged, timed sample table with their PNGs under $FIG.
# Usage: RUNS=runs FIG=docs/tokenbridge STEPS=1000 [PRESET=smoke] bash scripts/tokenbridge_figures.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs="${RUNS:-runs}"; fig="${FIG:-docs/tokenbridge}"; steps="${STEPS:-1000}"; preset="${PRESET:-}"
mkdir -p "$runs"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # four trainings share one accelerator
if [ ! -e "$runs/vae/DONE" ]; then
  python -m arjax.main --config "configs/shapes/vae.py${preset:+:$preset}" --workdir "$runs/vae" \
    --config.train.progress=False > "$runs/vae.log" 2>&1
  touch "$runs/vae/DONE"
fi
common=(--config.tokenizer.workdir="$runs/vae" --config.train.steps="$steps" --config.train.progress=False)
[ -z "$preset" ] && common+=(--config.evals.judge.every="$steps")
train() {  # name config [overrides...]
  local name=$1 config=$2; shift 2
  python -m arjax.main --config "configs/shapes/$config${preset:+:$preset}" --workdir "$runs/$name" "${common[@]}" "$@" \
    > "$runs/$name.log" 2>&1
}
train tb_data tokenbridge.py & p1=$!
train tb_identity tokenbridge.py --config.model.head.order=identity & p2=$!
train mar_diffusion mar.py & p3=$!
train mar_flow mar.py --config.model.head.kind=flow & p4=$!
wait $p1 && wait $p2 && wait $p3 && wait $p4
python scripts/tokenbridge_figures.py recon --vae "$runs/vae" --out "$fig" ${preset:+--preset $preset}
python scripts/tokenbridge_figures.py sample "$runs"/{tb_data,tb_identity,mar_diffusion,mar_flow} --out "$fig"
