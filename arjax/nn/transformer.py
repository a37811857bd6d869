"""A pre-norm decoder/encoder transformer whose attention pattern is a MaskSpec, built from a TransformerConfig.

  tcfg = TransformerConfig.make(cfg.transformer, width=cfg.width)
  h_BLD, cache = Transformer(tcfg).apply({'params': p}, x_BLD, mask, positions=pos, cond_BC=c, cache=cache)
Positions: 'learned' and 'rope1d' take int [B, L] (or [L]); 'rope2d' takes [B, L, 2]; 'rope3d'
[B, L, 3]; 'none' ignores them. With a cache (`tcfg.init_cache(...)`), the L new tokens of row b have
sequence indices end_B[b] + [0, L), are written there and attend to the cached keys the mask allows
on sequence indices; positions default to those indices. `whole_unit=True` says the L tokens are one
whole AR unit (a scale, frame, block) that sees every cached key and itself (Pallas: decode kernel).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from arjax import cache as cache_lib
from arjax import config as config_lib
from arjax.nn import attention as attn_lib
from arjax.nn import layers
from arjax.nn import quant
from arjax.nn import rope as rope_lib

POS_KINDS = ("learned", "rope1d", "rope2d", "rope3d", "none")
QK_NORMS = (False, True, "rms", "l2")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Everything that shapes a Transformer (hashable: it is a static module attribute)."""
  width: int
  depth: int
  heads: int
  kv_heads: Optional[int] = None  # None = heads (no GQA)
  mlp_ratio: float = 4.0
  mlp: str = "swiglu"
  norm: str = "rms"
  qk_norm: object = False  # one of QK_NORMS
  qkv_bias: bool = False
  adaln: bool = False
  pos: str = "rope1d"
  max_len: int = 1024
  rope_base: float = 10000.0
  impl: str = "auto"
  out_bias: bool = False  # bias on the attention output projection (VAR)
  drop_path: float = 0.0  # stochastic depth, rising linearly from 0 (block 0) to this (last block)
  rope_zero_negative: bool = False  # positions < 0 get an all-zero rotary table (LlamaGen's class token)
  norm_eps: float = 1e-6  # LlamaGen uses 1e-5

  def __post_init__(self):
    if self.pos not in POS_KINDS:
      raise ValueError(f"pos must be one of {POS_KINDS}, got {self.pos!r}")
    if self.qk_norm not in QK_NORMS:
      raise ValueError(f"qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")
    if self.width % self.heads:
      raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
    if self.heads % self.num_kv_heads:
      raise ValueError(f"heads {self.heads} must be a multiple of kv_heads {self.num_kv_heads}")

  @classmethod
  def make(cls, section, where: str = "model.transformer", **overrides) -> "TransformerConfig":
    """From a config section (ConfigDict / dict); `overrides` (set by the paradigm) win over it."""
    names = [f.name for f in dataclasses.fields(cls)]
    config_lib.check_keys(section, names, where)
    return cls(**{**dict(section), **overrides})

  @property
  def head_dim(self) -> int:
    return self.width // self.heads

  @property
  def num_kv_heads(self) -> int:
    return self.kv_heads or self.heads

  def init_cache(self, batch: int, length: int, dtype=None, *, window: Optional[int] = None,
                 sink: int = 0) -> cache_lib.KVCache:
    """An empty KV cache for `batch` rows of up to `length` tokens (a ring of sink + window slots if given), in
    `dtype` (default: the enclosing sampler's cache dtype, else f32: an int8 cache is then made empty, not
    quantised from zeros, which XLA constant-folded for 20 s of compile time)."""
    dtype = dtype or quant.current_cache() or jnp.float32
    return cache_lib.init(self.depth, batch, length, self.num_kv_heads, self.head_dim, dtype, window=window,
                          sink=sink)


class Attention(nn.Module):
  """Multi-head (GQA) self-attention with q/v biases (never k), RoPE and optional qk-norm:
  'rms' (True) RMS-normalises q and k; 'l2' is VAR's: unit q, k and a learnable per-head
  log-scale (clamped at log 100) in place of 1/sqrt(d)."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BLD, mask, angles_BLK=None, cache=None, layer=0, whole_unit=False, rope_keep_BL=None,
               static_end=None):
    """Returns (out, (k_all, v_all) of this layer written into `cache`, or None without one)."""
    c = self.config
    hd = c.head_dim
    proj = lambda n, name, bias: layers.DenseGeneral(
        (n, hd), use_bias=bias, name=name,
        kernel_init=nn.with_logical_partitioning(layers.default_init, ("embed", "heads", "kv")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")))
    q = proj(c.heads, "q", c.qkv_bias)(x_BLD)
    k = proj(c.num_kv_heads, "k", False)(x_BLD)
    v = proj(c.num_kv_heads, "v", c.qkv_bias)(x_BLD)
    sm_scale = None
    if c.qk_norm in (True, "rms"):
      q = nn.RMSNorm(epsilon=1e-6, name="q_norm")(q)
      k = nn.RMSNorm(epsilon=1e-6, name="k_norm")(k)
    elif c.qk_norm == "l2":
      log_scale = self.param("log_scale", nn.with_logical_partitioning(
          nn.initializers.constant(jnp.log(4.0)), ("heads",)), (c.heads,))
      unit = lambda t: t * jax.lax.rsqrt(jnp.sum(jnp.square(t.astype(jnp.float32)), -1, keepdims=True) + 1e-12)
      q = (unit(q) * jnp.exp(jnp.minimum(log_scale, jnp.log(100.0)))[:, None]).astype(x_BLD.dtype)
      k = unit(k).astype(x_BLD.dtype)
      sm_scale = 1.0
    if angles_BLK is not None:
      q, k = rope_lib.apply_rope(q, angles_BLK), rope_lib.apply_rope(k, angles_BLK)
    if rope_keep_BL is not None:  # an all-zero rotary table (LlamaGen's class token) zeroes q and k
      keep = rope_keep_BL[:, :, None, None].astype(q.dtype)
      q, k = q * keep, k * keep
    if cache is None:
      out = attn_lib.attention(q, k, v, mask, sm_scale=sm_scale, impl=c.impl)
      new_layer = None
    else:
      new_layer = cache_lib.write(cache, cache.k[layer], cache.v[layer], k, v)
      n = x_BLD.shape[1]
      q_idx_BQ, pos_BS = cache_lib.query_indices(cache, n), cache_lib.written_pos(cache, n)
      if cache.aligned and not attn_lib.is_runtime(mask):  # rows in lockstep: one mask serves the batch
        q_idx_BQ, pos_BS = q_idx_BQ[:1], pos_BS[:1]
      k_all, v_all = new_layer
      if static_end is not None:  # only the written prefix of the slots is read
        k_all, v_all = jax.tree.map(lambda a: a[:, :, :static_end], (k_all, v_all))
        pos_BS = pos_BS[:, :static_end]
      out = attn_lib.cached_attention(q, k_all, v_all, mask, q_idx_BQ, pos_BS, window=cache.window, sink=cache.sink,
                                      whole_unit=whole_unit, filled=static_end is not None, sm_scale=sm_scale,
                                      impl=c.impl)
    out = layers.DenseGeneral(c.width, axis=(-2, -1), name="o",
                          kernel_init=nn.with_logical_partitioning(layers.default_init, ("heads", "kv", "embed")),
                          use_bias=c.out_bias,
                          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(out)
    return out, new_layer


class Block(nn.Module):
  """Pre-norm block; with `adaln`, norms are un-scaled and modulated by cond (shift/scale/gate x2)
  on the tokens where adaln_keep_BL is True (all if None); the others pass through unmodulated."""
  config: TransformerConfig
  drop_path: float = 0.0  # this block's stochastic-depth rate

  @nn.compact
  def __call__(self, x_BLD, mask, angles_BLK=None, cond_BC=None, *, cache=None, layer=0, whole_unit=False,
               train=False, rope_keep_BL=None, adaln_keep_BL=None, static_end=None):
    c = self.config
    if c.adaln:
      sa, ca, ga, sm, cm, gm = layers.AdaLNModulation(c.width, 6, name="adaln")(cond_BC, adaln_keep_BL)
    h = layers.norm(c.norm, "norm1", use_scale=not c.adaln, eps=c.norm_eps)(x_BLD)
    if c.adaln:
      h = layers.modulate(h, sa, ca)
    h, new_layer = Attention(c, name="attn")(h, mask, angles_BLK, cache, layer, whole_unit, rope_keep_BL, static_end)
    x_BLD = x_BLD + self._drop_path(ga * h if c.adaln else h, train)
    h = layers.norm(c.norm, "norm2", use_scale=not c.adaln, eps=c.norm_eps)(x_BLD)
    if c.adaln:
      h = layers.modulate(h, sm, cm)
    h = layers.Mlp(int(c.width * c.mlp_ratio), c.mlp, name="mlp")(h)
    return x_BLD + self._drop_path(gm * h if c.adaln else h, train), new_layer

  def _drop_path(self, h_BLD, train):
    """Stochastic depth: drops the whole residual branch per example (kept ones scaled by 1/keep)."""
    if not train or self.drop_path <= 0:
      return h_BLD
    keep = 1.0 - self.drop_path
    mask_B = jax.random.bernoulli(self.make_rng("dropout"), keep, (h_BLD.shape[0],))
    return h_BLD * (mask_B[:, None, None] / keep).astype(h_BLD.dtype)


class Transformer(nn.Module):
  """A stack of Blocks over input embeddings x_BLD; returns final-normed features and the cache."""
  config: TransformerConfig

  @nn.nowrap
  def init_cache(self, batch: int, length: int, dtype=None, *, window=None, sink=0) -> cache_lib.KVCache:
    """TransformerConfig.init_cache (callable on an unbound module)."""
    return self.config.init_cache(batch, length, dtype, window=window, sink=sink)

  @nn.compact
  def __call__(self, x_BLD, mask, *, positions=None, cond_BC=None, cache: cache_lib.KVCache = None,
               whole_unit: bool = False, train: bool = False, adaln_keep_BL=None, static_end: Optional[int] = None):
    """adaln_keep_BL (bool [B, L]): which tokens AdaLN modulates (ACDiT: only the noised ones); None = all.
    static_end (int): the caller's promise that the cache is aligned and contiguous and that its rows end at this
    index once the L tokens are written; attention then reads only slots [0, static_end), and a whole unit skips
    the mask (VAR's scales: 1.6x fewer keys over the 10 scales)."""
    c = self.config
    if c.adaln and cond_BC is None:
      raise ValueError("adaln=True needs cond_BC")
    if static_end is not None and (cache is None or not cache.aligned or cache.window is not None):
      raise ValueError("static_end needs an aligned contiguous cache (rows in lockstep, window=None)")
    b, l, d = x_BLD.shape
    if d != c.width:
      raise ValueError(f"input width {d} != config width {c.width}")
    if positions is None:
      positions = jnp.arange(l) if cache is None else cache_lib.query_indices(cache, l)
    positions = jnp.asarray(positions)
    n_axes = {"rope2d": 2, "rope3d": 3}.get(c.pos, 1)
    if n_axes == 1 and positions.ndim < 3:
      positions = positions[..., None]
    if positions.ndim == 2:
      positions = positions[None]
    positions = jnp.broadcast_to(positions, (b, l, n_axes))
    angles = None
    if c.pos == "learned":
      table = self.param("pos_embed", nn.with_logical_partitioning(
          nn.initializers.normal(0.02), (None, "embed")), (c.max_len, d))
      x_BLD = x_BLD + jnp.take(table, positions[..., 0], axis=0).astype(x_BLD.dtype)
    elif c.pos.startswith("rope"):
      angles = rope_lib.rope_angles(positions, c.head_dim, c.rope_base)
    rope_keep = jnp.all(positions >= 0, axis=-1) if c.rope_zero_negative else None
    new_k, new_v = [], []
    for i in range(c.depth):
      rate = c.drop_path * i / max(c.depth - 1, 1)
      x_BLD, new_layer = Block(c, rate, name=f"block{i}")(
          x_BLD, mask, angles, cond_BC, cache=cache, layer=i, whole_unit=whole_unit, train=train,
          rope_keep_BL=rope_keep, adaln_keep_BL=adaln_keep_BL, static_end=static_end)
      if new_layer is not None:
        new_k.append(new_layer[0])
        new_v.append(new_layer[1])
    x_BLD = layers.norm(c.norm, "final_norm", use_scale=not c.adaln, eps=c.norm_eps)(x_BLD)
    if c.adaln:
      shift, scale = layers.AdaLNModulation(d, 2, name="final_adaln")(cond_BC, adaln_keep_BL)
      x_BLD = layers.modulate(x_BLD, shift, scale)
    new_cache = None if cache is None else cache_lib.advance(cache, new_k, new_v, l)
    return x_BLD, new_cache
