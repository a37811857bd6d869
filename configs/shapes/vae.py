"""KL-regularised conv VAE for `shapes`: 32x32 RGB -> 8x8x4 continuous latents (scale factor from data).

  python -m arjax.main --config configs/shapes/vae.py --workdir runs/vae
  python -m arjax.main --config configs/shapes/vae.py:smoke --workdir /tmp/vae
`train.maintain_every` is how often the latent scale factor (params['latent_std']) is re-estimated.
"""
from arjax.config import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False)
  c = base_config()
  c.model = dict(name="vae", image_size=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8,
                 latent_dim=4, kl_weight=1e-3, rec_loss="mse+l1", std_momentum=0.9)
  c.data.batch_size = 64
  c.optim.update(lr=2e-3, warmup_steps=100, weight_decay=0.0, b2=0.99)
  c.train.update(steps=1500, log_every=50, ckpt_every=500, ema_decay=0.99, maintain_every=10)
  if arg.smoke:
    c.model.update(ch=8, ch_mult=(1, 2, 2), norm_groups=4)
    c.data.update(batch_size=8, num_examples=64)
    c.optim.warmup_steps = 2
    c.train.update(steps=4, log_every=2, ckpt_every=4, maintain_every=2)
  return c
