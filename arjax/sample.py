"""Sample a grid from a trained or converted checkpoint:

  python -m arjax.sample --config configs/imagenet256/var_d16.py --checkpoint DIR --classes 207,360 \
      --out grid.png [--seed 0] [--cfg_scale 2.5] [--top_k 900] [--top_p 0.96] [--temperature 1.0]
DIR holds checkpoints/ (a training workdir or `python -m arjax.convert --out DIR`); the tokenizer comes
from DIR/tokenizer if present, else from the config's tokenizer.workdir.
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from arjax import config as config_lib
from arjax import registry
from arjax.eval import grid
from arjax.train import checkpoint


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--config", required=True)
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--classes", required=True, help="comma-separated class ids")
  p.add_argument("--out", default="grid.png")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--ema", type=int, default=1)
  for name in ("temperature", "top_k", "top_p", "cfg_scale"):
    p.add_argument(f"--{name}", type=float, default=None)
  a = p.parse_args()
  cfg = config_lib.load_config(a.config)
  tok_dir = os.path.join(a.checkpoint, "tokenizer")
  if "tokenizer" in cfg and os.path.isdir(tok_dir):
    cfg.tokenizer.workdir = tok_dir
  model = registry.build_model(cfg)
  params = checkpoint.load_params(os.path.join(a.checkpoint, "checkpoints"), ema=bool(a.ema))
  opts = dict(cfg.sample)
  for name in ("temperature", "top_k", "top_p", "cfg_scale"):
    if getattr(a, name) is not None:
      opts[name] = int(getattr(a, name)) if name == "top_k" else getattr(a, name)
  labels = jnp.asarray([int(c) for c in a.classes.split(",")], jnp.int32)
  bad = [int(c) for c in labels if not 0 <= int(c) < model.num_classes]
  if bad:
    raise ValueError(f"--classes {bad} out of range [0, {model.num_classes})")
  images = model.sample(params, labels, jax.random.PRNGKey(a.seed), **opts)
  grid.save_grid(np.asarray(images), a.out)
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
