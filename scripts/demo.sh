#!/usr/bin/env bash
# The main job on the embedded default: train a VQ tokenizer and a class-conditional next-token
# model on `shapes`, sample a grid, judge it. Outputs go to runs/demo/ (override: WORKDIR=...).
ARJAX_TCMALLOC="${ARJAX_TCMALLOC:-install}" source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
python -m arjax.demo --workdir "${WORKDIR:-runs/demo}" "$@"
