"""VAR-d16 on ImageNet 256 (the official architecture): depth 16, width 1024, 16 heads, MLP x4,
drop-path 0.1*16/24, 1000 classes + null class, 10 scales (680 tokens) over the 4096-code VQVAE.

  python -m arjax.convert --from var --ckpt var_d16.pth --vae vae_ch160v4096z32.pth --out runs/var_d16
  python -m arjax.sample --config configs/imagenet256/var_d16.py --checkpoint runs/var_d16 \
      --classes 207,360 --out grid.png
VAR's guidance `cfg=c` (ramped linearly over scales) is cfg_scale=1+c with cfg_schedule='linear'.
Training (needs ImageNet prepared for TFDS as imagenet2012):
  python -m arjax.main --config configs/imagenet256/var_d16.py --workdir runs/var_d16
"""
import os

import ml_collections

from arjax.config import base_config, parse_arg

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
  parse_arg(arg)  # no presets: any argument is an error
  c = base_config()
  c.data.update(name="tfds:imagenet2012", image_size=256, batch_size=768)
  c.tokenizer = ml_collections.ConfigDict(dict(config=os.path.join(HERE, "msvq_var.py"), workdir="", ema=True))
  c.model = dict(name="next_scale", num_classes=1000, width=1024, label_drop=0.1,
                 transformer=dict(depth=16, heads=16, mlp_ratio=4.0, drop_path=0.1 * 16 / 24, impl="auto"))
  c.optim.update(lr=8e-5 * 768 / 256, warmup_steps=2000, weight_decay=0.05, b1=0.9, b2=0.95, clip=2.0)
  c.train.update(steps=350_000, compute_dtype="bfloat16")
  c.sample.update(temperature=1.0, top_k=900, top_p=0.96, cfg_scale=2.5, cfg_schedule="linear",
                  cache_dtype="compute")  # scales attend hundreds of query rows: a bf16 cache is faster on CPU too
  return c
