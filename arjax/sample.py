"""Sample a grid from a trained or converted checkpoint:

  python -m arjax.sample --config configs/imagenet256/var_d16.py --checkpoint DIR --classes 207,360 \
      --out grid.png [--seed 0] [--cfg_scale 2.5] [--top_k 900] [--top_p 0.96] [--temperature 1.0]
DIR holds checkpoints/ (a training workdir or `python -m arjax.convert --out DIR`); the tokenizer comes
from DIR/tokenizer if present, else from the config's tokenizer.workdir.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from arjax import cli
from arjax import config as config_lib
from arjax import registry
from arjax.eval import grid
from arjax.train import checkpoint


def class_ids(classes: str, num_classes: int):
  """'207,360' -> int32 [2]; raises ValueError naming entries that are not class ids in [0, num_classes)."""
  bad = [c for c in classes.split(",") if not (c.strip().isdigit() and int(c) < num_classes)]
  if bad:
    raise ValueError(f"--classes {bad} are not class ids in [0, {num_classes})")
  return jnp.asarray([int(c) for c in classes.split(",")], jnp.int32)


def main():
  p = cli.ArgumentParser(description=__doc__)
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
  labels = class_ids(a.classes, model.num_classes)
  params = checkpoint.load_params(os.path.join(a.checkpoint, "checkpoints"), ema=bool(a.ema))
  opts = dict(cfg.sample)
  for name in ("temperature", "top_k", "top_p", "cfg_scale"):
    if getattr(a, name) is not None:
      opts[name] = int(getattr(a, name)) if name == "top_k" else getattr(a, name)
  images = model.sample(params, {"label": labels}, jax.random.PRNGKey(a.seed), **opts)
  grid.save_grid(np.asarray(images), a.out)
  print(f"wrote {a.out}")


if __name__ == "__main__":
  cli.run_cli(main)
