"""LlamaGen's VQ for ImageNet 256 (vq_ds16_c2i): ch 128, ch_mult (1,1,2,2,4), z 256, 16384 l2-normalised
8-d codes, 1x1 quant convs: a one-scale multi-scale VQ without phi (16x16 tokens).

  python -m arjax.convert --from llamagen --ckpt c2i_B_256.pt --vae vq_ds16_c2i.pt --out DIR
Training (needs ImageNet prepared for TFDS as imagenet2012):
  python -m arjax.main --config configs/imagenet256/vq_llamagen.py --workdir runs/vq_llamagen
"""
from arjax.config import base_config, parse_arg


def get_config(arg=None):
  parse_arg(arg)  # no presets: any argument is an error
  c = base_config()
  c.data.update(name="tfds:imagenet2012", image_size=256, batch_size=128)
  c.model = dict(name="msvq", image_size=256, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, norm_groups=32,
                 z_channels=256, code_dim=8, vocab_size=16384, patch_nums=(16,), quant_resi=0.0, share_quant_resi=0,
                 quant_conv_ks=1, l2_codes=True, beta=0.25, attn=True, mid_attn=True)
  return c
