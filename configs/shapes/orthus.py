"""Orthus-style interleaved image-text model on the embedded `shapes` captions (docs/orthus.md).

One causal transformer over [caption bytes <boi> 64 continuous VQ-latent slots <eoi> caption bytes]: an LM head for
text, a v-prediction diffusion head (DDIM, CFG on v) for the image slots, soft-VQ feedback through a trainable copy
of the VQ codebook. Training mixes caption -> image and image -> caption rows in every batch.

  python -m arjax.main --config configs/shapes/orthus.py --workdir runs/orthus --config.tokenizer.workdir=runs/vq
  python -m arjax.main --config configs/shapes/orthus.py:vq --workdir runs/orthus_vq --config.tokenizer.workdir=runs/vq
  python -m arjax.main --config configs/shapes/orthus.py:smoke --workdir /tmp/orthus
Presets: (none) demo size; `vq` the Chameleon-style baseline on the same backbone (hard VQ ids as extra vocabulary of
the one LM head, no diffusion head); `linear` feeds slots through a linear projection instead of soft-VQ; `smoke`
tiny, untrained tokenizer. They combine (`smoke,vq`). Evaluators: `judge` (text -> image caption-attribute accuracy
of the shapes judge) and `caption` (image -> text caption accuracy, exact and per attribute).
"""
import os

import ml_collections

from arjax.config import base_config, parse_arg

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False, vq=False, linear=False)
  c = base_config()
  c.tokenizer = ml_collections.ConfigDict(dict(config=os.path.join(HERE, "vq.py"), workdir="", ema=False))
  c.model = dict(name="interleaved", num_classes=8, cond="caption", label_drop=0.1, width=160, max_text=48,
                 image_head="lm" if arg.vq else "diffusion", feed="linear" if arg.linear else "soft_vq", tau=0.05,
                 image_weight=1.0,
                 transformer=dict(depth=4, heads=5, kv_heads=5, mlp="swiglu", mlp_ratio=3.0, norm="rms",
                                  qk_norm=True, pos="rope1d", impl="auto"),
                 head=dict(kind="diffusion", width=128, depth=2, steps=25, prediction="v", batch_mul=2,
                           train_steps=1000, clip_x0=5.0))
  c.data.batch_size = 32
  c.optim.update(lr=2e-3, warmup_steps=100, weight_decay=0.05, b2=0.95)
  c.train.update(steps=1000, log_every=50, ckpt_every=500, ema_decay=0.995)
  c.sample.update(temperature=1.0, top_k=0, top_p=1.0, cfg_scale=2.0, cfg_schedule="constant")
  c.evals.judge = dict(type="judge", every=c.train.steps, num_samples=256, cond="caption")
  c.evals.caption = dict(type="caption", every=c.train.steps, num_samples=256, sample_opts=dict(temperature=0.0))
  if arg.smoke:
    c.evals = ml_collections.ConfigDict()
    c.tokenizer.config = os.path.join(HERE, "vq.py") + ":smoke"
    c.model.update(width=32, max_text=48)
    c.model.transformer.update(depth=1, heads=2, kv_heads=2)
    c.model.head.update(width=16, depth=1, steps=2, batch_mul=1)
    c.data.update(batch_size=4, num_examples=64)
    c.optim.warmup_steps = 2
    c.train.update(steps=4, log_every=2, ckpt_every=4, num_sample_images=2)
  return c
