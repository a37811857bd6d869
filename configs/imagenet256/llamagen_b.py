"""LlamaGen-B (c2i, ImageNet 256; the official architecture): 12 layers, width 768, 12 heads, SwiGLU
hidden 2048, RMSNorm, 2D RoPE with LlamaGen's convention, 1 class token, 16x16 tokens of the
16384-code VQ; 256 forward passes per sample (VAR-d16: 10).

  python -m arjax.convert --from llamagen --ckpt c2i_B_256.pt --vae vq_ds16_c2i.pt --out runs/llamagen_b
  python -m arjax.sample --config configs/imagenet256/llamagen_b.py --checkpoint runs/llamagen_b \
      --classes 207,360 --out grid.png
Not exact: arjax's RMSNorm eps is 1e-6 (LlamaGen: 1e-5).
Training (needs ImageNet prepared for TFDS as imagenet2012):
  python -m arjax.main --config configs/imagenet256/llamagen_b.py --workdir runs/llamagen_b
"""
import os

import ml_collections

from arjax.config import base_config, parse_arg

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
  parse_arg(arg)  # no presets: any argument is an error
  c = base_config()
  c.data.update(name="tfds:imagenet2012", image_size=256, batch_size=256)
  c.tokenizer = ml_collections.ConfigDict(dict(config=os.path.join(HERE, "vq_llamagen.py"), workdir="", ema=True))
  c.model = dict(name="next_token", num_classes=1000, width=768, label_drop=0.1, rope_convention="llamagen",
                 transformer=dict(depth=12, heads=12, kv_heads=12, mlp="swiglu", mlp_ratio=8 / 3, norm="rms",
                                  qk_norm=False, pos="rope2d", norm_eps=1e-5, impl="auto"))
  c.optim.update(lr=1e-4, warmup_steps=0, weight_decay=0.05, b1=0.9, b2=0.95, clip=1.0)
  c.train.update(steps=300_000, compute_dtype="bfloat16")
  # int8_head: with int8=True the 768 x 16384 logits head is int8 too - decoding is weight-read bound and the head is
  # a quarter of the weights; greedy tokens 100% equal to f32 (random weights), 11% faster (docs/inference_speed.md)
  c.sample.update(temperature=1.0, top_k=0, top_p=1.0, cfg_scale=2.0, cfg_schedule="constant", int8_head=True)
  return c
