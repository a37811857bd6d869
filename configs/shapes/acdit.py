"""ACDiT (blockwise AR-diffusion) over VAE latents on `shapes`: [clean ; noised] blocks, SCAM mask.

  python -m arjax.main --config configs/shapes/acdit.py --workdir runs/acdit \
      --config.tokenizer.workdir=runs/vae
  python -m arjax.main --config configs/shapes/acdit.py:smoke --workdir /tmp/acdit
Presets: (none) demo size; `smoke` tiny, a few steps, untrained VAE. `model.flow` holds the
default number of solver steps per block (`steps_end` > 0 anneals them over blocks, DiSA-style).
"""
import os

import ml_collections

from arjax.config import base_config, parse_arg

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False)
  c = base_config()
  c.tokenizer = ml_collections.ConfigDict(dict(config=os.path.join(HERE, "vae.py"), workdir="", ema=True))
  c.model = dict(name="block_diffusion", num_classes=8, width=192, label_drop=0.1, block_size=16,
                 flow=dict(steps=25, steps_end=0, solver="heun", sde_scale=1.0),
                 transformer=dict(depth=4, heads=6, kv_heads=6, mlp="swiglu", mlp_ratio=3.0, norm="rms",
                                  qk_norm=True, pos="rope2d", impl="auto"))
  c.data.batch_size = 64
  c.optim.update(lr=1e-3, warmup_steps=100, weight_decay=0.05, b2=0.95)
  c.train.update(steps=1000, log_every=50, ckpt_every=500, ema_decay=0.995)
  c.sample.update(temperature=1.0, cfg_scale=2.0, cfg_schedule="linear")
  c.evals.judge = dict(type="judge", every=1000, num_samples=512)
  if arg.smoke:
    c.tokenizer.config = os.path.join(HERE, "vae.py") + ":smoke"
    c.model.update(width=32, block_size=16)
    c.model.flow.steps = 2
    c.model.transformer.update(depth=1, heads=2, kv_heads=2)
    c.data.update(batch_size=8, num_examples=64)
    c.optim.warmup_steps = 2
    c.train.update(steps=3, log_every=1, ckpt_every=3, num_sample_images=2, progress=False)
    c.evals = ml_collections.ConfigDict()
  return c
