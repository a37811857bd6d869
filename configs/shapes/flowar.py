"""FlowAR (scale-wise AR + a per-token flow-matching head) over VAE latents on `shapes`.

Scales 1, 2, 4, 8 (85 tokens, 4 transformer passes); each scale's input is the previous scale
upsampled; CFG ramps linearly over scales; `head.steps_end` > 0 anneals head steps over scales (DiSA).

  python -m arjax.main --config configs/shapes/vae.py --workdir runs/vae
  python -m arjax.main --config configs/shapes/flowar.py --workdir runs/flowar \
      --config.tokenizer.workdir=runs/vae
  python -m arjax.main --config configs/shapes/flowar.py:smoke --workdir /tmp/flowar
Presets: (none) demo size; `smoke` tiny, a few steps, untrained VAE.
"""
import os

import ml_collections

from arjax.config import base_config, parse_arg

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False)
  c = base_config()
  c.tokenizer = ml_collections.ConfigDict(dict(config=os.path.join(HERE, "vae.py"), workdir="", ema=True))
  c.model = dict(name="scale_flow", num_classes=8, width=192, label_drop=0.1, scales=(1, 2, 4, 8),
                 transformer=dict(depth=4, heads=6, kv_heads=6, mlp="swiglu", mlp_ratio=3.0, norm="rms",
                                  qk_norm=True, pos="learned", impl="auto"),
                 head=dict(kind="flow", width=256, depth=3, steps=25, steps_end=0, solver="euler",
                           sde_scale=1.0, batch_mul=2))
  c.data.batch_size = 64
  c.optim.update(lr=1e-3, warmup_steps=100, weight_decay=0.05, b2=0.95)
  c.train.update(steps=1000, log_every=50, ckpt_every=500, ema_decay=0.995)
  c.sample.update(temperature=1.0, cfg_scale=3.0, cfg_schedule="linear")
  c.evals.judge = dict(type="judge", every=1000, num_samples=512)
  if arg.smoke:
    c.tokenizer.config = os.path.join(HERE, "vae.py") + ":smoke"
    c.model.width = 32
    c.model.transformer.update(depth=1, heads=2, kv_heads=2)
    c.model.head.update(width=32, depth=1, steps=2, batch_mul=1)
    c.data.update(batch_size=8, num_examples=64)
    c.optim.warmup_steps = 2
    c.train.update(steps=3, log_every=1, ckpt_every=3, num_sample_images=2, progress=False)
    c.evals = ml_collections.ConfigDict()
  return c
