"""Class-conditional JPEG-LM on the embedded `shapes` dataset: a byte-level causal LM over canonical JPEG streams
(quality 25, 4:2:0, an RST marker between MCUs, the shared tables left out), no learned tokenizer.

The transformer matches configs/shapes/next_token.py (width 160, depth 4, 5 heads, SwiGLU, RMSNorm, qk-norm)
with 1D RoPE over [class, BOS, bytes, EOS]; a 32 px file has 93-160 bytes (59 of them the fixed header), so
max_len=192 leaves room. Sampling: temperature 1.0, top-k 50 / top-p 0.9 (the paper's), constrained decoding on.

  python -m arjax.main --config configs/shapes/jpeg_lm.py --workdir runs/jpeg_lm
  python -m arjax.main --config configs/shapes/jpeg_lm.py:smoke --workdir /tmp/jpeg_lm
Presets: (none) demo size; `smoke` tiny, a few steps.
"""
from arjax.config import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False)
  c = base_config()
  c.model = dict(name="jpeg_lm", num_classes=8, width=160, label_drop=0.1, image_size=32, quality=25, max_len=192,
                 transformer=dict(depth=4, heads=5, kv_heads=5, mlp="swiglu", mlp_ratio=3.0, norm="rms",
                                  qk_norm=True, impl="auto"))
  c.data.batch_size = 64
  c.optim.update(lr=2e-3, warmup_steps=100, weight_decay=0.05, b2=0.95)
  c.train.update(steps=1000, log_every=50, ckpt_every=500, ema_decay=0.995)
  c.sample.update(temperature=1.0, top_k=50, top_p=0.9, cfg_scale=1.0, cfg_schedule="constant")
  c.evals.judge = dict(type="judge", every=c.train.steps, num_samples=512)
  if arg.smoke:
    c.evals = dict()
    c.model.update(width=32, max_len=176)
    c.model.transformer.update(depth=1, heads=2, kv_heads=2)
    c.data.update(batch_size=8, num_examples=64)
    c.optim.warmup_steps = 2
    c.train.update(steps=4, log_every=2, ckpt_every=4, num_sample_images=4)
  return c
