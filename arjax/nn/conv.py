"""Conv encoder/decoder building blocks shared by the image tokenizers (VQ, VAE, multi-scale VQ).

GroupNorm + SiLU pre-activation ResBlocks, stride-2 conv downsampling, nearest x2 + conv upsampling.
Resolution changes once between consecutive `ch_mult` levels, so the spatial factor is
2 ** (len(ch_mult) - 1). Modules compute in the dtype of their inputs/params (no fixed dtype).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def conv(features: int, kernel: int = 3, stride: int = 1, padding=None, name=None):
  """A square conv with 'same'-style padding unless `padding` is given."""
  pad = ((kernel // 2, kernel // 2),) * 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=pad, name=name)


def group_norm(groups: int, channels: int, name=None):
  """GroupNorm(eps 1e-6); raises if `channels` is not a multiple of `groups`."""
  if channels % groups:
    raise ValueError(f"norm_groups={groups} must divide every conv width; got a width of {channels}")
  return nn.GroupNorm(num_groups=groups, epsilon=1e-6, name=name)


def check_widths(ch: int, ch_mult: Sequence[int], groups: int):
  """Raises ValueError early (at construction) if some level width is not a multiple of `groups`."""
  if not ch_mult:
    raise ValueError("ch_mult must name at least one level")
  for m in ch_mult:
    group_norm(groups, ch * m)


def autoencoder_config(cfg, defaults: dict, rec_losses) -> tuple[dict, int, tuple]:
  """Validated conv-autoencoder settings: (cfg merged over defaults, image_size, latent grid (h, w))."""
  from arjax import config as config_lib
  config_lib.check_keys(cfg, defaults.keys(), "model")
  c = dict(defaults, **(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)))
  if c["rec_loss"] not in rec_losses:
    raise ValueError(f"model.rec_loss must be one of {rec_losses}, got {c['rec_loss']!r}")
  factor = 2 ** (len(c["ch_mult"]) - 1)
  if c["image_size"] % factor:
    raise ValueError(f"model.image_size={c['image_size']} must be a multiple of the downsampling factor "
                     f"2**(len(ch_mult)-1)={factor}")
  check_widths(c["ch"], c["ch_mult"], c["norm_groups"])
  image_size = int(c["image_size"])
  return c, image_size, (image_size // factor,) * 2


class ResBlock(nn.Module):
  """x + conv(SiLU(GN(conv(SiLU(GN(x)))))), with a 1x1 shortcut when the width changes."""
  out: int
  groups: int = 8

  @nn.compact
  def __call__(self, x_BHWC):
    h = conv(self.out, name="conv1")(nn.silu(group_norm(self.groups, x_BHWC.shape[-1], "norm1")(x_BHWC)))
    h = conv(self.out, name="conv2")(nn.silu(group_norm(self.groups, self.out, "norm2")(h)))
    if x_BHWC.shape[-1] != self.out:
      x_BHWC = conv(self.out, 1, name="shortcut")(x_BHWC)
    return x_BHWC + h


class Downsample(nn.Module):
  """Stride-2 3x3 conv with (0, 1) padding: [B, H, W, C] -> [B, H/2, W/2, out or C]."""
  out: int | None = None

  @nn.compact
  def __call__(self, x_BHWC):
    return conv(self.out or x_BHWC.shape[-1], 3, 2, ((0, 1), (0, 1)), name="conv")(x_BHWC)


class Upsample(nn.Module):
  """Nearest-neighbour x2 then a 3x3 conv: [B, H, W, C] -> [B, 2H, 2W, out or C]."""
  out: int | None = None

  @nn.compact
  def __call__(self, x_BHWC):
    x = jnp.repeat(jnp.repeat(x_BHWC, 2, axis=1), 2, axis=2)
    return conv(self.out or x_BHWC.shape[-1], name="conv")(x)


class Encoder(nn.Module):
  """Image [B, H, W, 3] -> features [B, H/f, W/f, out_channels], f = 2 ** (len(ch_mult) - 1)."""
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  out_channels: int
  groups: int = 8

  @nn.compact
  def __call__(self, x_BHWC):
    h = conv(self.ch, name="conv_in")(x_BHWC)
    last = len(self.ch_mult) - 1
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = ResBlock(self.ch * mult, self.groups, name=f"down{i}_block{j}")(h)
      if i != last:
        h = Downsample(name=f"down{i}_downsample")(h)
    h = ResBlock(h.shape[-1], self.groups, name="mid_block")(h)
    h = nn.silu(group_norm(self.groups, h.shape[-1], "norm_out")(h))
    return conv(self.out_channels, name="conv_out")(h)


class Decoder(nn.Module):
  """Features [B, h, w, C] -> image [B, h*f, w*f, out_channels], mirroring Encoder.

  Each Upsample already outputs the next (larger) level's width, so no full-resolution conv runs
  at the wider width (the costly op on CPU).
  """
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  out_channels: int = 3
  groups: int = 8

  @nn.compact
  def __call__(self, z_BhwC):
    h = conv(self.ch * self.ch_mult[-1], name="conv_in")(z_BhwC)
    h = ResBlock(h.shape[-1], self.groups, name="mid_block")(h)
    for i in reversed(range(len(self.ch_mult))):
      for j in range(self.num_res_blocks):
        h = ResBlock(self.ch * self.ch_mult[i], self.groups, name=f"up{i}_block{j}")(h)
      if i != 0:
        h = Upsample(self.ch * self.ch_mult[i - 1], name=f"up{i}_upsample")(h)
    h = nn.silu(group_norm(self.groups, h.shape[-1], "norm_out")(h))
    return conv(self.out_channels, name="conv_out")(h)
