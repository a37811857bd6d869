"""Class-conditional any-subset AR (AS-ARM) over the UTF-8 bytes of `shapes` captions (64 bytes, 0-padded; no image
tokenizer), sampled / infilled with ASSD. Sample grids show the sampled captions drawn as text.

  python -m arjax.main --config configs/shapes/any_order_text.py --workdir runs/any_order_text
  python -m arjax.main --config configs/shapes/any_order_text.py:smoke --workdir /tmp/any_order_text
  python scripts/infill.py --workdir runs/any_order_text --out runs/any_order_text_infill
Presets: (none) demo size; `smoke` tiny, a few steps.
"""
import ml_collections

from arjax.config import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False)
  c = base_config()
  c.data.image_size = 96  # the pipeline's images are unused; sample grids draw captions on 96x96 canvases
  c.model = dict(name="any_order", tokens="caption", render_size=c.data.image_size, num_classes=8, width=128,
                 label_drop=0.1, mask_warmup_steps=150, raster_frac=0.5,
                 transformer=dict(depth=4, heads=4, mlp="swiglu", mlp_ratio=3.0, norm="rms", qk_norm=True,
                                  pos="rope1d", impl="xla"))
  c.data.batch_size = 32
  c.optim.update(lr=2e-3, warmup_steps=50, weight_decay=0.05, b2=0.95)
  c.train.update(steps=600, log_every=50, ckpt_every=300, ema_decay=0.99)
  if arg.smoke:
    c.model.update(width=32, mask_warmup_steps=2)
    c.model.transformer.update(depth=1, heads=2)
    c.data.update(batch_size=4, num_examples=16)
    c.optim.warmup_steps = 2
    c.train.update(steps=4, log_every=2, ckpt_every=4, num_sample_images=4)
  return c
