"""The conv encoder/decoder stack of every image tokenizer (VQ, VAE, multi-scale VQ), LDM/taming layout.

GroupNorm + SiLU pre-activation ResBlocks, optional single-head AttnBlocks at the lowest resolution and in
the middle, stride-2 conv downsampling, nearest x2 + conv upsampling. Resolution changes once between
consecutive `ch_mult` levels, so the spatial factor is 2 ** (len(ch_mult) - 1). `ConvConfig` picks the
variant: its defaults are the LDM one (VAR, LlamaGen; the converters' parameter names), `ConvConfig.compact`
the small attention-free one of the VQ / VAE tokenizers. Modules compute in the dtype of their inputs/params,
except the inference kernels of `for_decoding`: a bf16 conv kernel takes bf16 operands and accumulates into f32, a
`Winograd` one (f32 on CPU) runs its 3x3 convolutions by Winograd F(4x4, 3x3), an `Int8` one (int8 sampling on a
CPU with AVX512-VNNI) by the int8 kernel of arjax.nn.cpu_int8.
"""
from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arjax.nn import cpu_int8, quant

HIGHEST = jax.lax.Precision.HIGHEST
CHUNK_ROWS = 3072  # pixels (batch x rows x width) per product of conv3x3_rows
# f32 3x3 decoder convs with >= this many input and output channels run by Winograd: below, the tile transforms
# cost more than the products save (XLA:CPU, 2 x 256 x 256: 160 -> 160 0.53x the direct conv, 160 -> 64 1.13x,
# 160 -> 3 5.6x)
WINOGRAD_MIN_CHANNELS = 128
# int8 decoding: 3x3 decoder convs with >= this many channels in and out (and C a multiple of 4) run by the VNNI
# kernel, 0.48-0.67x the Winograd time at VAR's decoder shapes (scripts/bench_conv.py)
INT8_MIN_CHANNELS = 128


def _chunk_rows(b: int, h: int, w: int) -> int:
  """The largest divisor of h whose chunk of b x rows x w pixels stays within CHUNK_ROWS (at least 1 row)."""
  target = max(1, CHUNK_ROWS // (b * w))
  return max(r for r in range(1, h + 1) if h % r == 0 and r <= target) if target < h else h


def conv3x3_rows(x_BHWC, w_33CD):
  """SAME 3x3 stride-1 convolution with bf16 operands and f32 accumulation, as row-chunked products.

  A scan over chunks of input rows: one [B * rows * W, C] x [C, 9 * D] product per chunk gives every tap's
  contribution at every input pixel; the column taps are summed in place, and the kernel rows' contributions of
  the chunk's last input rows carry into the next chunk, so no row is multiplied twice. On XLA:CPU a bf16 -> f32
  product of a few thousand rows and a few hundred columns runs at ~650 GFLOP/s on AMX, a convolution at ~150
  (bf16 or f32) (scripts/bench_conv.py, docs/inference_speed.md)."""
  b, h, w, c = x_BHWC.shape
  d = w_33CD.shape[-1]
  rows = _chunk_rows(b, h, w)
  w_CN = w_33CD.transpose(2, 0, 1, 3).reshape(c, 9 * d).astype(jnp.bfloat16)
  shift = lambda y, pad: jnp.pad(y, ((0, 0), (0, 0), pad, (0, 0)))

  def kernel_row(z, i):
    """Kernel row i's contribution at each input row of z [B, R, W, 3, 3, D] (its column taps summed)."""
    return z[:, :, :, i, 1] + shift(z[:, :, :-1, i, 0], (1, 0)) + shift(z[:, :, 1:, i, 2], (0, 1))

  # output row r = k0[r - 1] + k1[r] + k2[r + 1], k_i = kernel_row(., i) at input rows. The chunk of input rows
  # [r0, r0 + rows) completes output rows [r0 - 1, r0 + rows - 1); the carry holds k0 of the two input rows and
  # k1 of the one input row before the chunk (zeros before row 0).
  def chunk(carry, r0):
    x_BRWC = jax.lax.dynamic_slice_in_dim(x_BHWC, r0, rows, axis=1).astype(jnp.bfloat16)
    z = jnp.einsum("brwc,cn->brwn", x_BRWC, w_CN, preferred_element_type=jnp.float32).reshape(b, rows, w, 3, 3, d)
    k0, k1 = jnp.concatenate([carry[0], kernel_row(z, 0)], 1), jnp.concatenate([carry[1], kernel_row(z, 1)], 1)
    # the carry from z's last rows, not from k0 / k1: XLA then fuses the output sum instead of materialising them
    tail = (jnp.concatenate([carry[0], kernel_row(z[:, max(rows - 2, 0):], 0)], 1)[:, -2:],
            kernel_row(z[:, -1:], 1))
    return tail, k0[:, :rows] + k1[:, :rows] + kernel_row(z, 2)

  zeros = lambda n: jnp.zeros((b, n, w, d), jnp.float32)
  (k0, k1), y_NBRWD = jax.lax.scan(chunk, (zeros(2), zeros(1)), jnp.arange(0, h, rows))
  y_BHWD = jnp.moveaxis(y_NBRWD, 0, 1).reshape(b, h, w, d)  # output rows -1 .. h - 2
  return jnp.concatenate([y_BHWD[:, 1:], k0[:, :1] + k1], axis=1)  # row h - 1: its row below is the zero padding


# Winograd F(4x4, 3x3) (Lavin & Gray 2016): a 6x6 input tile d gives the 4x4 output tile A^T [(G g G^T) * (B^T d B)] A
WINOGRAD_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                        [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float32)
WINOGRAD_G = np.array([[6, 0, 0], [-4, -4, -4], [-4, 4, -4], [1, 2, 4], [1, -2, 4], [0, 0, 24]], np.float32) / 24
WINOGRAD_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                       np.float32)


@flax.struct.dataclass
class Winograd:
  """A 3x3 conv kernel [3, 3, C, D] with its Winograd transform u = G kernel G^T [6, 6, C, D] (`winograd(kernel)`):
  `Conv` then runs a SAME stride-1 convolution as `winograd_conv3x3`. The kernel leads, so flax's parameter shape
  check (which zips the leaves) still sees [3, 3, C, D]."""
  kernel: jax.Array
  u: jax.Array

  shape = property(lambda self: self.kernel.shape)
  ndim = property(lambda self: self.kernel.ndim)
  dtype = property(lambda self: self.kernel.dtype)


def _combine(matrix, xs):
  """[sum_j matrix[i, j] * xs[j] for each row i], skipping zero coefficients (the transforms are sparse): elementwise
  sums XLA fuses, where an einsum with the small matrix runs as a slow transposing product on XLA:CPU."""
  out = []
  for row in matrix:
    terms = [x if c == 1 else -x if c == -1 else float(c) * x for c, x in zip(row, xs) if c != 0]
    out.append(functools.reduce(operator.add, terms))
  return out


def winograd(kernel_33CD) -> Winograd:
  rows = _combine(WINOGRAD_G, list(kernel_33CD))  # 6 x [3, C, D]
  u = jnp.stack([jnp.stack(_combine(WINOGRAD_G, list(r))) for r in rows])
  return Winograd(kernel_33CD, u)


def winograd_conv3x3(x_BHWC, u_66CD):
  """SAME 3x3 stride-1 convolution by Winograd F(4x4, 3x3): per 4x4 output tile, 36 products of transformed 6x6
  input tiles with u instead of 144 - 4x fewer multiplications, as 36 [B * tiles, C] x [C, D] products plus
  elementwise transforms. Relative error ~1e-5 in f32 (a direct f32 conv: ~1e-7); on XLA:CPU 0.4-0.55x the time
  of its f32 convolution at an image decoder's shapes (scripts/bench_conv.py). f32 only: bf16 operands would
  lose ~1% to the transforms' cancellations."""
  b, h, w, c = x_BHWC.shape
  th, tw = -(-h // 4), -(-w // 4)  # tiles per column / row
  # tile (i, j) reads padded rows 4i .. 4i + 5: rows 4i + a of group i (a < 4), then rows 0, 1 of group i + 1
  x = jnp.pad(x_BHWC, ((0, 0), (1, 4 * th + 3 - h), (1, 4 * tw + 3 - w), (0, 0)))
  x = x.reshape(b, th + 1, 4, tw + 1, 4, c)
  rows = _combine(WINOGRAD_BT, [x[:, :-1, a] if a < 4 else x[:, 1:, a - 4] for a in range(6)])
  tiles = [v for r in rows for v in _combine(WINOGRAD_BT, [r[:, :, :-1, a] if a < 4 else r[:, :, 1:, a - 4]
                                                           for a in range(6)])]  # 36 x [B, th, tw, C]
  m = [jnp.einsum("bhwc,cd->bhwd", v, u_CD) for v, u_CD in zip(tiles, u_66CD.reshape(36, c, -1))]
  cols = [_combine(WINOGRAD_AT, m[j::6]) for j in range(6)]  # cols[j][a]: output row a of the tiles, column j
  y = [_combine(WINOGRAD_AT, [col[a] for col in cols]) for a in range(4)]  # y[a][e]: [B, th, tw, D]
  y_BHWD = jnp.stack([jnp.stack(ya, 3) for ya in y], 2).reshape(b, 4 * th, 4 * tw, -1)
  return y_BHWD[:, :h, :w]


def _pads(padding):
  return padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)


def _same_3x3(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, feature_group_count) -> bool:
  """A SAME-padded 3x3 stride-1 undilated ungrouped 2D convolution."""
  plain = all(d == 1 for d in (*window_strides, *(lhs_dilation or ()), *(rhs_dilation or ())))
  return (lhs.ndim == 4 and rhs.shape[:2] == (3, 3) and plain and feature_group_count == 1
          and _pads(padding) in ("SAME", ((1, 1), (1, 1))))


def conv_general_dilated(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None):
  """lax.conv_general_dilated for flax's channels-last Conv, with the image decoders' inference kernels
  (`for_decoding`): an `Int8` kernel runs a SAME 3x3 conv by `cpu_int8.conv3x3` (others with its values); a
  `Winograd` kernel runs a SAME 3x3 conv as `winograd_conv3x3` (others with its plain kernel); a bf16 kernel
  takes bf16 operands with f32 accumulation (output f32), and on CPU a SAME 3x3 one runs as `conv3x3_rows` (GPU /
  TPU convs are native)."""
  kw = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision)
  same_3x3 = _same_3x3(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, feature_group_count)
  if isinstance(rhs, quant.Int8):
    return cpu_int8.conv3x3(lhs, rhs.q, rhs.scale.reshape(-1)) if same_3x3 else conv_general_dilated(
        lhs, rhs.values(), window_strides, padding, **kw)
  if isinstance(rhs, Winograd):
    return winograd_conv3x3(lhs, rhs.u) if same_3x3 else conv_general_dilated(lhs, rhs.kernel, window_strides,
                                                                              padding, **kw)
  if rhs.dtype != jnp.bfloat16:
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kw)
  if jax.default_backend() == "cpu" and same_3x3:
    return conv3x3_rows(lhs, rhs)
  return jax.lax.conv_general_dilated(lhs.astype(jnp.bfloat16), rhs, window_strides, padding,
                                      preferred_element_type=jnp.float32, **dict(kw, precision=None))


def promote_dtype(x, kernel, *rest, dtype=None, inexact=True):
  """`quant.promote_dtype`, passing `Winograd` kernels through too."""
  if dtype is None and isinstance(kernel, Winograd):
    return (x, kernel, *rest)
  return quant.promote_dtype(x, kernel, *rest, dtype=dtype, inexact=inexact)


class Conv(nn.Conv):
  """nn.Conv (same parameters) whose kernel may be bf16 or `Winograd` (`conv_general_dilated`): image decoders at
  inference (`for_decoding`)."""
  promote_dtype: Any = promote_dtype
  conv_general_dilated: Any = conv_general_dilated


def for_decoding(tokenizer_params, compute_dtype, int8: bool = False):
  """The tokenizer params an image decode runs on: the conv kernels under a 'decoder' in compute_dtype - bf16:
  row-chunked bf16 products; f32 on CPU: 3x3 kernels of >= WINOGRAD_MIN_CHANNELS in and out as `Winograd`
  (XLA:CPU's f32 convolution is ~2x slower), and so in bf16 on CPUs without AMX, from the kernels rounded to bf16
  (there XLA's bf16 products are slower than f32 ones: VAR-d16's VQ decode 5.7 s with bf16 rows, 2.0 s by
  Winograd, `scripts/bench_conv.py`) - except, with int8 where the VNNI kernel serves, 3x3 kernels of >=
  INT8_MIN_CHANNELS in and out (C a multiple of 4) as per-channel `quant.Int8`; everything else as it is
  (codebooks, the quantiser's convs: the tokens do not change). Idempotent."""
  from arjax import host
  dtype = quant.dtype_of(compute_dtype)
  use_winograd = jax.default_backend() == "cpu" and (dtype == jnp.float32 or not host.has_amx())
  use_int8 = int8 and jax.default_backend() == "cpu" and cpu_int8.available()
  prepared = lambda x: isinstance(x, (Winograd, quant.Int8))

  def one(path, leaf):
    names = [getattr(k, "key", None) for k in path]
    if prepared(leaf) or not (names[-1:] == ["kernel"] and getattr(leaf, "ndim", 0) == 4 and "decoder" in names):
      return leaf
    c, d = leaf.shape[2:]
    if use_int8 and leaf.shape[:2] == (3, 3) and c % 4 == 0 and min(c, d) >= INT8_MIN_CHANNELS:
      return quant.quantize_kernel(leaf)
    if use_winograd and leaf.shape[:2] == (3, 3) and min(c, d) >= WINOGRAD_MIN_CHANNELS:
      return winograd(leaf.astype(dtype).astype(jnp.float32))
    return leaf.astype(dtype)

  return jax.tree_util.tree_map_with_path(one, tokenizer_params, is_leaf=prepared)


@dataclasses.dataclass(frozen=True)
class ConvConfig:
  """Encoder/decoder layout: level widths ch * ch_mult[i], num_res_blocks ResBlocks per encoder level."""
  ch: int
  ch_mult: tuple[int, ...]
  num_res_blocks: int
  groups: int = 32              # GroupNorm groups; must divide every width
  attn: bool = True             # an AttnBlock after each ResBlock of the lowest-resolution level
  mid_attn: bool = True         # an AttnBlock after the first mid ResBlock
  mid_blocks: int = 2           # mid ResBlocks (1 or 2)
  extra_up_block: bool = True   # decoder levels hold num_res_blocks + 1 ResBlocks
  upsample_to_next: bool = False  # the decoder's upsample conv outputs the next level's width (else its own)
  exact: bool = False           # HIGHEST-precision convs / attention

  def __post_init__(self):
    object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
    if not self.ch_mult:
      raise ValueError("ch_mult must name at least one level")
    if self.mid_blocks not in (1, 2):
      raise ValueError(f"mid_blocks must be 1 or 2, got {self.mid_blocks}")
    for m in self.ch_mult:
      group_norm(self.groups, self.ch * m)

  @classmethod
  def compact(cls, ch: int, ch_mult, num_res_blocks: int, groups: int) -> ConvConfig:
    """The VQ / VAE stack: no attention, one mid block, upsampling straight to the next level's width."""
    return cls(int(ch), ch_mult, int(num_res_blocks), int(groups), attn=False, mid_attn=False, mid_blocks=1,
               extra_up_block=False, upsample_to_next=True)

  def width(self, level: int) -> int:
    return self.ch * self.ch_mult[level]


def conv(features: int, kernel: int = 3, stride: int = 1, padding=None, exact: bool = False, name=None):
  """A square conv with 'same'-style padding unless `padding` is given."""
  pad = ((kernel // 2, kernel // 2),) * 2 if padding is None else padding
  return Conv(features, (kernel, kernel), strides=stride, padding=pad, precision=HIGHEST if exact else None,
              name=name)


class GroupNorm(nn.Module):
  """GroupNorm (eps 1e-6) over channels-last x [B, ..., C], with flax's parameters (scale, bias [C]). Statistics
  come from per-channel sums over the pixels (two-pass per channel), combined per group by the law of total
  variance; XLA:CPU reduces [B, pixels, C] over the pixels ~9x faster than flax's reduction over (H, W, C / G).
  Group values go back to channels as a product with the one-hot [G, C] (exact: one nonzero term), not a repeat:
  XLA:CPU fuses a repeat into the normalising pass and redoes its index arithmetic per element. GN + SiLU at
  2 x 256 x 256 x 160: 14 ms, 33 ms with a repeat and the group mean subtracted before the variance's reduction,
  ~45 ms with flax's (docs/inference_speed.md)."""
  num_groups: int
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x):
    b, c, g = x.shape[0], x.shape[-1], self.num_groups
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    x_BPC = x.reshape(b, -1, c).astype(jnp.float32)
    mean_BC = jnp.mean(x_BPC, 1)
    m2_BC = jnp.mean(jnp.square(x_BPC - mean_BC[:, None]), 1)
    one_hot_GC = (jnp.arange(c)[None] // (c // g) == jnp.arange(g)[:, None]).astype(jnp.float32)
    to_channels = lambda t_BG: jnp.dot(t_BG, one_hot_GC, precision=jax.lax.Precision.HIGHEST)
    per_group = lambda t_BC: t_BC.reshape(b, g, c // g).mean(-1)
    mean_BC_g = to_channels(per_group(mean_BC))
    var_BC_g = to_channels(per_group(m2_BC + jnp.square(mean_BC - mean_BC_g)))
    a_BC = jax.lax.rsqrt(var_BC_g + self.epsilon) * scale
    y = (x_BPC - mean_BC_g[:, None]) * a_BC[:, None] + bias
    return y.reshape(x.shape).astype(jnp.result_type(x.dtype, scale.dtype))


def group_norm(groups: int, channels: int, name=None):
  """GroupNorm(eps 1e-6); raises if `channels` is not a multiple of `groups`."""
  if channels % groups:
    raise ValueError(f"norm_groups={groups} must divide every conv width; got a width of {channels}")
  return GroupNorm(groups, name=name)


def batch_images(batch, image_size: int):
  """batch['image'], checked to be [B, image_size, image_size, 3]."""
  x = batch["image"]
  if x.ndim != 4 or x.shape[1:] != (image_size, image_size, 3):
    raise ValueError(f"batch['image'] must be [B, {image_size}, {image_size}, 3], got {x.shape}")
  return x


def autoencoder_config(cfg, defaults: dict, rec_losses) -> tuple[dict, int, tuple, ConvConfig]:
  """Validated conv-autoencoder settings: (cfg merged over defaults, image_size, latent grid, compact stack)."""
  from arjax import config as config_lib
  config_lib.check_keys(cfg, defaults.keys(), "model")
  c = dict(defaults, **(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)))
  if c["rec_loss"] not in rec_losses:
    raise ValueError(f"model.rec_loss must be one of {rec_losses}, got {c['rec_loss']!r}")
  factor = 2 ** (len(c["ch_mult"]) - 1)
  if c["image_size"] % factor:
    raise ValueError(f"model.image_size={c['image_size']} must be a multiple of the downsampling factor "
                     f"2**(len(ch_mult)-1)={factor}")
  stack = ConvConfig.compact(c["ch"], c["ch_mult"], c["num_res_blocks"], c["norm_groups"])
  image_size = int(c["image_size"])
  return c, image_size, (image_size // factor,) * 2, stack


class ResBlock(nn.Module):
  """x + conv(SiLU(GN(conv(SiLU(GN(x)))))), with a 1x1 shortcut when the width changes."""
  out: int
  groups: int
  exact: bool = False

  @nn.compact
  def __call__(self, x_BHWC):
    e = self.exact
    h = conv(self.out, exact=e, name="conv1")(nn.silu(group_norm(self.groups, x_BHWC.shape[-1], "norm1")(x_BHWC)))
    h = conv(self.out, exact=e, name="conv2")(nn.silu(group_norm(self.groups, self.out, "norm2")(h)))
    if x_BHWC.shape[-1] != self.out:
      x_BHWC = conv(self.out, 1, exact=e, name="nin_shortcut")(x_BHWC)
    return x_BHWC + h


class AttnBlock(nn.Module):
  """x + proj_out(single-head spatial self-attention over GN(x)), 1x1-conv q, k, v."""
  groups: int
  exact: bool = False

  @nn.compact
  def __call__(self, x_BHWC):
    b, hh, ww, c = x_BHWC.shape
    e, p = self.exact, HIGHEST if self.exact else None
    h = group_norm(self.groups, c, "norm")(x_BHWC)
    q_BNC, k_BNC, v_BNC = (conv(c, 1, exact=e, name=n)(h).reshape(b, hh * ww, c) for n in ("q", "k", "v"))
    w_BNN = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q_BNC, k_BNC, precision=p) * c ** -0.5, axis=-1)
    h = jnp.einsum("bij,bjc->bic", w_BNN, v_BNC, precision=p).reshape(b, hh, ww, c)
    return x_BHWC + conv(c, 1, exact=e, name="proj_out")(h)


def _mid(cfg: ConvConfig, h):
  """mid_block_1, [mid_attn_1], [mid_block_2] at the lowest resolution (called inside a compact module)."""
  h = ResBlock(h.shape[-1], cfg.groups, cfg.exact, name="mid_block_1")(h)
  if cfg.mid_attn:
    h = AttnBlock(cfg.groups, cfg.exact, name="mid_attn_1")(h)
  if cfg.mid_blocks == 2:
    h = ResBlock(h.shape[-1], cfg.groups, cfg.exact, name="mid_block_2")(h)
  return h


class Encoder(nn.Module):
  """Image [B, H, W, 3] -> features [B, H/f, W/f, out_channels], f = 2 ** (len(ch_mult) - 1)."""
  cfg: ConvConfig
  out_channels: int

  @nn.compact
  def __call__(self, x_BHWC):
    cfg, e = self.cfg, self.cfg.exact
    last = len(cfg.ch_mult) - 1
    h = conv(cfg.ch, exact=e, name="conv_in")(x_BHWC)
    for i in range(last + 1):
      for j in range(cfg.num_res_blocks):
        h = ResBlock(cfg.width(i), cfg.groups, e, name=f"down_{i}_block_{j}")(h)
        if i == last and cfg.attn:
          h = AttnBlock(cfg.groups, e, name=f"down_{i}_attn_{j}")(h)
      if i != last:
        h = conv(h.shape[-1], 3, 2, ((0, 1), (0, 1)), e, name=f"down_{i}_downsample")(h)
    h = _mid(cfg, h)
    h = nn.silu(group_norm(cfg.groups, h.shape[-1], "norm_out")(h))
    return conv(self.out_channels, exact=e, name="conv_out")(h)


class Decoder(nn.Module):
  """Features [B, h, w, C] -> image [B, h*f, w*f, out_channels], mirroring Encoder."""
  cfg: ConvConfig
  out_channels: int = 3

  @nn.compact
  def __call__(self, z_BhwC):
    cfg, e = self.cfg, self.cfg.exact
    last = len(cfg.ch_mult) - 1
    h = conv(cfg.width(last), exact=e, name="conv_in")(z_BhwC)
    h = _mid(cfg, h)
    for i in reversed(range(last + 1)):
      for j in range(cfg.num_res_blocks + cfg.extra_up_block):
        h = ResBlock(cfg.width(i), cfg.groups, e, name=f"up_{i}_block_{j}")(h)
        if i == last and cfg.attn:
          h = AttnBlock(cfg.groups, e, name=f"up_{i}_attn_{j}")(h)
      if i != 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = conv(cfg.width(i - 1) if cfg.upsample_to_next else h.shape[-1], exact=e, name=f"up_{i}_upsample")(h)
    h = nn.silu(group_norm(cfg.groups, h.shape[-1], "norm_out")(h))
    return conv(self.out_channels, exact=e, name="conv_out")(h)
