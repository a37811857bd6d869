"""VAR's multi-scale residual VQ for `shapes`: 32x32 RGB -> token maps 1,2,3,4,6,8 (8x8 latent).

  python -m arjax.main --config configs/shapes/msvq.py --workdir runs/msvq
  python -m arjax.main --config configs/shapes/msvq.py:smoke --workdir /tmp/msvq
One 256-entry 16-d codebook shared by all scales, 4 partially shared phi convs (ratio 0.5); dead
codes restart from batch residuals every `train.maintain_every` steps.
"""
from arjax.config import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False)
  c = base_config()
  c.model = dict(name="msvq", image_size=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8,
                 z_channels=16, code_dim=16, vocab_size=256, patch_nums=(1, 2, 3, 4, 6, 8), quant_resi=0.5,
                 share_quant_resi=4, quant_conv_ks=3, l2_codes=False, beta=0.25, attn=False, mid_attn=True)
  c.data.batch_size = 32
  c.optim.update(lr=3e-3, warmup_steps=50, weight_decay=0.05, b2=0.95, clip=1.0)
  c.train.update(steps=1000, log_every=50, ckpt_every=500, ema_decay=0.99, maintain_every=20)
  if arg.smoke:
    c.model.update(ch=8, norm_groups=4, z_channels=8, code_dim=8, vocab_size=32)
    c.data.update(batch_size=8, num_examples=64)
    c.optim.warmup_steps = 2
    c.train.update(steps=4, log_every=2, ckpt_every=4, maintain_every=2)
  return c
