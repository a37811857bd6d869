"""Class-conditional next-scale prediction (VAR) on the embedded `shapes` dataset.

VAR in miniature over the multi-scale VQ of configs/shapes/msvq.py: 6 scales (1,2,3,4,6,8 = 130
tokens) generated in 6 forward passes; CFG ramps linearly over scales (VAR's cfg=c is cfg_scale=1+c).

  python -m arjax.main --config configs/shapes/msvq.py --workdir runs/msvq
  python -m arjax.main --config configs/shapes/var.py --workdir runs/var \
      --config.tokenizer.workdir=runs/msvq
  python -m arjax.main --config configs/shapes/var.py:smoke --workdir /tmp/var
Presets: (none) demo size; `smoke` tiny, a few steps, untrained tokenizer.
"""
import os

import ml_collections

from arjax.config import base_config, parse_arg

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False)
  c = base_config()
  c.tokenizer = ml_collections.ConfigDict(dict(config=os.path.join(HERE, "msvq.py"), workdir="", ema=True))
  c.model = dict(name="next_scale", num_classes=8, width=192, label_drop=0.1,
                 transformer=dict(depth=4, heads=6, mlp_ratio=4.0, drop_path=0.0, impl="auto"))
  c.data.batch_size = 64
  c.optim.update(lr=2e-3, warmup_steps=100, weight_decay=0.05, b2=0.95)
  c.train.update(steps=1200, log_every=50, ckpt_every=400, ema_decay=0.995)
  c.sample.update(temperature=1.0, top_k=0, top_p=1.0, cfg_scale=3.0, cfg_schedule="linear",
                  cache_dtype="compute")  # scales attend hundreds of query rows: a bf16 cache is faster on CPU too
  c.evals.judge = dict(type="judge", every=1200, num_samples=512)
  if arg.smoke:
    c.tokenizer.config = os.path.join(HERE, "msvq.py") + ":smoke"
    c.model.width = 32
    c.model.transformer.update(depth=2, heads=2, drop_path=0.1)
    c.data.update(batch_size=8, num_examples=64)
    c.optim.warmup_steps = 2
    c.train.update(steps=4, log_every=2, ckpt_every=4, num_sample_images=4)
    c.evals = ml_collections.ConfigDict()
  return c
