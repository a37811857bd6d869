"""VQ tokenizer for `shapes`: 32x32 RGB -> 8x8 tokens from a 256-entry l2-normalised 8-d codebook.

  python -m arjax.main --config configs/shapes/vq.py --workdir runs/vq
  python -m arjax.main --config configs/shapes/vq.py:smoke --workdir /tmp/vq
Dead codes are restarted from batch latents every `train.maintain_every` steps (step 0 is the
codebook initialisation).
"""
from arjax.config import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False)
  c = base_config()
  c.model = dict(name="vq", image_size=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8,
                 codebook_size=256, code_dim=8, beta=0.25, rec_loss="mse+l1")
  c.data.batch_size = 32
  c.optim.update(lr=3e-3, warmup_steps=50, weight_decay=0.05, b2=0.95, clip=1.0)
  # ~29.5 dB PSNR and 100% code usage after ~1000 steps (about 3 CPU-minutes)
  c.train.update(steps=1000, log_every=50, ckpt_every=500, ema_decay=0.99, maintain_every=20)
  if arg.smoke:
    c.model.update(ch=8, ch_mult=(1, 2, 2), codebook_size=32, norm_groups=4)
    c.data.update(batch_size=8, num_examples=64)
    c.optim.warmup_steps = 2
    c.train.update(steps=4, log_every=2, ckpt_every=4, maintain_every=2)
  return c
