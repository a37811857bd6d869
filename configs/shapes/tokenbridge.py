"""TokenBridge on `shapes`: MAR's backbone over dimension-wise quantised KL-VAE latents, per-dimension AR head.

  python -m arjax.main --config configs/shapes/tokenbridge.py --workdir runs/tokenbridge \
      --config.tokenizer.workdir=runs/vae
  python -m arjax.main --config configs/shapes/tokenbridge.py:smoke --workdir /tmp/tokenbridge
Presets: (none) demo size, the backbone, steps and data of configs/shapes/mar.py; `smoke` tiny, untrained VAE;
`levels=N` grid levels per channel (default 64); `order=data|identity` the head's channel order
(a permutation: --config.model.head.order=2,0,3,1);
`tokenizer` gives the dimwise tokenizer's own config (what config.tokenizer.config names: the VAE's config,
the grid; its params are the trained VAE's, from config.tokenizer.workdir). See docs/tokenbridge.md.
"""
import os

import ml_collections

from arjax.config import load_config, parse_arg

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False, tokenizer=False, levels=64, order="data")
  vae = os.path.join(HERE, "vae.py") + (":smoke" if arg.smoke else "")
  if arg.tokenizer:
    c = load_config(vae)  # the VAE's data section
    c.model = dict(name="dimwise", vae=vae, levels=arg.levels, std_range=3.0, x_min=-5.0, x_max=5.0,
                   order_images=16 if arg.smoke else 512)
    return c
  c = load_config(os.path.join(HERE, "mar.py") + (":smoke" if arg.smoke else ""))
  c.tokenizer.config = f"{os.path.abspath(__file__)}:tokenizer,levels={arg.levels}" + (",smoke" if arg.smoke else "")
  c.model.head = dict(kind="dimwise", width=128, depth=2, heads=4, order=arg.order)
  if arg.smoke:
    c.model.head.update(width=32, depth=1, heads=2)
  return c
