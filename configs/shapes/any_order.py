"""Class-conditional any-subset AR (AS-ARM) over `shapes` VQ tokens, sampled / infilled with ASSD.

Two-stream attention as one transformer over [class ; 8x8 content tokens ; 8x8 query tokens] under a ranked mask;
"joint" training (mask rate 0.15 warming up to U[0.85, 0.99]); see arjax/paradigms/any_order.py, docs/any_order.md.

  python -m arjax.main --config configs/shapes/any_order.py --workdir runs/any_order \
      --config.tokenizer.workdir=runs/vq
  python -m arjax.main --config configs/shapes/any_order.py:smoke --workdir /tmp/any_order
  python scripts/infill.py --workdir runs/any_order --out runs/any_order_infill
Presets: (none) demo size; `smoke` tiny, a few steps, untrained tokenizer.
Sampling options: draft_len (1 = sequential; k > 1 = ASSD), order ('raster' | 'random'), temperature, top_k, top_p,
cfg_scale (constant schedule).
"""
import os

import ml_collections

from arjax.config import base_config, parse_arg

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False)
  c = base_config()
  c.tokenizer = ml_collections.ConfigDict(dict(config=os.path.join(HERE, "vq.py"), workdir="", ema=False))
  c.model = dict(name="any_order", tokens="image", num_classes=8, width=128, label_drop=0.1, mask_warmup_steps=150,
                 raster_frac=0.5,
                 transformer=dict(depth=4, heads=4, mlp="swiglu", mlp_ratio=3.0, norm="rms", qk_norm=True,
                                  pos="rope2d", impl="xla"))
  c.data.batch_size = 32
  c.optim.update(lr=2e-3, warmup_steps=50, weight_decay=0.05, b2=0.95)
  c.train.update(steps=600, log_every=50, ckpt_every=300, ema_decay=0.99)
  c.sample.update(temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0)
  c.evals.judge = dict(type="judge", every=c.train.steps, num_samples=256)
  if arg.smoke:
    c.evals = ml_collections.ConfigDict()
    c.tokenizer.config = os.path.join(HERE, "vq.py") + ":smoke"
    c.model.update(width=32, mask_warmup_steps=2)
    c.model.transformer.update(depth=1, heads=2)
    c.data.update(batch_size=4, num_examples=16)
    c.optim.warmup_steps = 2
    c.train.update(steps=4, log_every=2, ckpt_every=4, num_sample_images=4)
  return c
