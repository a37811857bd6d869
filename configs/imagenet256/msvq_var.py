"""VAR's multi-scale VQVAE for ImageNet 256 (vae_ch160v4096z32): ch 160, ch_mult (1,1,2,2,4), 4096
codes of 32 dims shared by 10 scales (1..16), 4 partially shared phi convs (ratio 0.5), 3x3 quant convs.

  python -m arjax.convert --from var --ckpt var_d16.pth --vae vae_ch160v4096z32.pth --out DIR
Training (needs ImageNet prepared for TFDS as imagenet2012):
  python -m arjax.main --config configs/imagenet256/msvq_var.py --workdir runs/msvq_var
"""
from arjax.config import base_config, parse_arg


def get_config(arg=None):
  parse_arg(arg)  # no presets: any argument is an error
  c = base_config()
  c.data.update(name="tfds:imagenet2012", image_size=256, batch_size=256)
  c.model = dict(name="msvq", image_size=256, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, norm_groups=32,
                 z_channels=32, code_dim=32, vocab_size=4096, patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
                 quant_resi=0.5, share_quant_resi=4, quant_conv_ks=3, l2_codes=False, beta=0.25, attn=True,
                 mid_attn=True)
  return c
