"""Class-conditional next-token (raster) AR over VQ tokens on the embedded `shapes` dataset.

A LlamaGen-style model in miniature: [class token, 8x8 VQ tokens], 2D RoPE, SwiGLU, label dropout
for CFG, KV-cached sampling with temperature / top-k / top-p / CFG.

  python -m arjax.main --config configs/shapes/next_token.py --workdir runs/nt \
      --config.tokenizer.workdir=runs/vq
  python -m arjax.main --config configs/shapes/next_token.py:smoke --workdir /tmp/nt
  python -m arjax.main --config configs/shapes/next_token.py:caption --workdir runs/nt_caption \
      --config.tokenizer.workdir=runs/vq
  python -m arjax.main --config configs/shapes/next_token.py:drafter --workdir runs/speculative_drafter \
      --config.tokenizer.workdir=runs/vq
Presets: (none) demo size; `smoke` tiny, a few steps, untrained tokenizer; `caption` conditions on the
caption bytes (the Conditioner's caption encoder) and judges caption attributes; `drafter` a ~14x smaller model
on the same VQ tokens, the draft model of speculative decoding (docs/speculative.md); they combine
(`smoke,caption`, `drafter,smoke`).
"""
import os

import ml_collections

from arjax.config import base_config, parse_arg

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False, caption=False, drafter=False)
  c = base_config()
  c.tokenizer = ml_collections.ConfigDict(dict(config=os.path.join(HERE, "vq.py"), workdir="", ema=False))
  c.model = dict(name="next_token", num_classes=8, width=160, label_drop=0.1,
                 transformer=dict(depth=4, heads=5, kv_heads=5, mlp="swiglu", mlp_ratio=3.0, norm="rms",
                                  qk_norm=True, pos="rope2d", impl="auto"))
  c.data.batch_size = 64
  c.optim.update(lr=2e-3, warmup_steps=100, weight_decay=0.05, b2=0.95)
  c.train.update(steps=1000, log_every=50, ckpt_every=500, ema_decay=0.995)
  c.sample.update(temperature=1.0, top_k=50, top_p=1.0, cfg_scale=3.0, cfg_schedule="constant")
  if arg.caption:  # text-conditional: the caption bytes instead of the class; judged on caption attributes
    c.model.cond = "caption"
    c.evals.judge = dict(type="judge", every=c.train.steps, num_samples=512, cond="caption")
  if arg.drafter:  # same conditioning and tokens as the demo model; width 48, 2 blocks
    c.model.width = 48
    c.model.transformer.update(depth=2, heads=3, kv_heads=3)
  if arg.smoke:
    c.evals = ml_collections.ConfigDict()
    c.tokenizer.config = os.path.join(HERE, "vq.py") + ":smoke"
    c.model.width = 32
    c.model.transformer.update(depth=2, heads=2, kv_heads=2)
    c.data.update(batch_size=8, num_examples=64)
    c.optim.warmup_steps = 2
    c.train.update(steps=4, log_every=2, ckpt_every=4, num_sample_images=4)
  return c
