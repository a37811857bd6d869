"""A pre-norm decoder/encoder transformer whose attention pattern is a MaskSpec.

  h_BLD, cache = Transformer(...).apply({'params': p}, x_BLD, mask, positions=pos, cond_BC=c,
                                         cache=cache)
Positions: 'learned' and 'rope1d' take int [B, L] (or [L]); 'rope2d' takes [B, L, 2]; 'rope3d'
[B, L, 3]; 'none' ignores them. With a cache, the L new tokens are written at cache.index and
attend to everything already in it (mask evaluated at query offset cache.index).
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from arjax import cache as cache_lib
from arjax.nn import attention as attn_lib
from arjax.nn import layers
from arjax.nn import rope as rope_lib

POS_KINDS = ("learned", "rope1d", "rope2d", "rope3d", "none")


QK_NORMS = (False, True, "rms", "l2")


class Attention(nn.Module):
  """Multi-head (GQA) self-attention with q/v biases (never k), RoPE and optional qk-norm:
  'rms' (True) RMS-normalises q and k; 'l2' is VAR's: unit q, k and a learnable per-head
  log-scale (clamped at log 100) in place of 1/sqrt(d)."""
  heads: int
  kv_heads: int
  qk_norm: object = False
  qkv_bias: bool = False
  impl: str = "auto"
  out_bias: bool = False

  @nn.compact
  def __call__(self, x_BLD, mask, angles_BLK=None, layer_cache=None, index=None, rope_keep_BL=None):
    d = x_BLD.shape[-1]
    hd = d // self.heads
    proj = lambda n, name, bias: nn.DenseGeneral(
        (n, hd), use_bias=bias, name=name,
        kernel_init=nn.with_logical_partitioning(layers.default_init, ("embed", "heads", "kv")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")))
    q = proj(self.heads, "q", self.qkv_bias)(x_BLD)
    k = proj(self.kv_heads, "k", False)(x_BLD)
    v = proj(self.kv_heads, "v", self.qkv_bias)(x_BLD)
    if self.qk_norm not in QK_NORMS:
      raise ValueError(f"qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")
    sm_scale = None
    if self.qk_norm in (True, "rms"):
      q = nn.RMSNorm(epsilon=1e-6, name="q_norm")(q)
      k = nn.RMSNorm(epsilon=1e-6, name="k_norm")(k)
    elif self.qk_norm == "l2":
      log_scale = self.param("log_scale", nn.with_logical_partitioning(
          nn.initializers.constant(jnp.log(4.0)), ("heads",)), (self.heads,))
      unit = lambda t: t * jax.lax.rsqrt(jnp.sum(jnp.square(t.astype(jnp.float32)), -1, keepdims=True) + 1e-12)
      q = (unit(q) * jnp.exp(jnp.minimum(log_scale, jnp.log(100.0)))[:, None]).astype(x_BLD.dtype)
      k = unit(k).astype(x_BLD.dtype)
      sm_scale = 1.0
    if angles_BLK is not None:
      q, k = rope_lib.apply_rope(q, angles_BLK), rope_lib.apply_rope(k, angles_BLK)
    if rope_keep_BL is not None:  # an all-zero rotary table (LlamaGen's class token) zeroes q and k
      keep = rope_keep_BL[:, :, None, None].astype(q.dtype)
      q, k = q * keep, k * keep
    if layer_cache is None:
      out = attn_lib.attention(q, k, v, mask, sm_scale=sm_scale, impl=self.impl)
      new_cache = None
    else:
      k_all, v_all = cache_lib.write(*layer_cache, k, v, index)
      valid_B = jnp.full((x_BLD.shape[0],), index + x_BLD.shape[1], jnp.int32)
      out = attn_lib.attention(q, k_all, v_all, mask, q_offset=index, kv_valid_B=valid_B, sm_scale=sm_scale,
                               impl=self.impl)
      new_cache = (k_all, v_all)
    out = nn.DenseGeneral(d, axis=(-2, -1), name="o",
                          kernel_init=nn.with_logical_partitioning(layers.default_init, ("heads", "kv", "embed")),
                          use_bias=self.out_bias,
                          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(out)
    return out, new_cache


class Block(nn.Module):
  """Pre-norm block; with `adaln`, norms are un-scaled and modulated by cond (shift/scale/gate x2)
  on the tokens where adaln_keep_BL is True (all if None); the others pass through unmodulated."""
  heads: int
  kv_heads: int
  mlp_ratio: float = 4.0
  mlp: str = "swiglu"
  norm: str = "rms"
  qk_norm: object = False
  qkv_bias: bool = False
  adaln: bool = False
  impl: str = "auto"
  out_bias: bool = False
  drop_path: float = 0.0
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, x_BLD, mask, angles_BLK=None, cond_BC=None, layer_cache=None, index=None, train=False,
               rope_keep_BL=None, adaln_keep_BL=None):
    d = x_BLD.shape[-1]
    if self.adaln:
      sa, ca, ga, sm, cm, gm = layers.AdaLNModulation(d, 6, name="adaln")(cond_BC, adaln_keep_BL)
    h = layers.norm(self.norm, "norm1", use_scale=not self.adaln, eps=self.norm_eps)(x_BLD)
    if self.adaln:
      h = layers.modulate(h, sa, ca)
    h, new_cache = Attention(self.heads, self.kv_heads, self.qk_norm, self.qkv_bias, self.impl, self.out_bias,
                             name="attn")(h, mask, angles_BLK, layer_cache, index, rope_keep_BL)
    x_BLD = x_BLD + self._drop_path(ga * h if self.adaln else h, train)
    h = layers.norm(self.norm, "norm2", use_scale=not self.adaln, eps=self.norm_eps)(x_BLD)
    if self.adaln:
      h = layers.modulate(h, sm, cm)
    h = layers.Mlp(int(d * self.mlp_ratio), self.mlp, name="mlp")(h)
    return x_BLD + self._drop_path(gm * h if self.adaln else h, train), new_cache

  def _drop_path(self, h_BLD, train):
    """Stochastic depth: drops the whole residual branch per example (kept ones scaled by 1/keep)."""
    if not train or self.drop_path <= 0:
      return h_BLD
    keep = 1.0 - self.drop_path
    mask_B = jax.random.bernoulli(self.make_rng("dropout"), keep, (h_BLD.shape[0],))
    return h_BLD * (mask_B[:, None, None] / keep).astype(h_BLD.dtype)


class Transformer(nn.Module):
  """A stack of Blocks over input embeddings x_BLD; returns final-normed features and the cache."""
  depth: int
  heads: int
  kv_heads: Optional[int] = None
  mlp_ratio: float = 4.0
  mlp: str = "swiglu"
  norm: str = "rms"
  qk_norm: object = False
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

  @nn.compact
  def __call__(self, x_BLD, mask, *, positions=None, cond_BC=None, cache: cache_lib.KVCache = None,
               train: bool = False, adaln_keep_BL=None):
    """adaln_keep_BL (bool [B, L]): which tokens AdaLN modulates (ACDiT: only the noised ones); None = all."""
    if self.pos not in POS_KINDS:
      raise ValueError(f"pos must be one of {POS_KINDS}, got {self.pos!r}")
    if self.adaln and cond_BC is None:
      raise ValueError("adaln=True needs cond_BC")
    b, l, d = x_BLD.shape
    if d % self.heads:
      raise ValueError(f"width {d} must be divisible by heads {self.heads}")
    index = None if cache is None else cache.index
    if positions is None:
      start = 0 if cache is None else cache.index
      positions = jnp.arange(l) + start
    positions = jnp.asarray(positions)
    n_axes = {"rope2d": 2, "rope3d": 3}.get(self.pos, 1)
    if n_axes == 1 and positions.ndim == 1:
      positions = positions[:, None]
    if positions.ndim == 2:
      positions = positions[None]
    positions = jnp.broadcast_to(positions, (b, l, n_axes))
    angles = None
    if self.pos == "learned":
      table = self.param("pos_embed", nn.with_logical_partitioning(
          nn.initializers.normal(0.02), (None, "embed")), (self.max_len, d))
      x_BLD = x_BLD + jnp.take(table, positions[..., 0], axis=0).astype(x_BLD.dtype)
    elif self.pos.startswith("rope"):
      angles = rope_lib.rope_angles(positions, d // self.heads, self.rope_base)
    rope_keep = jnp.all(positions >= 0, axis=-1) if self.rope_zero_negative else None
    new_k, new_v = [], []
    for i in range(self.depth):
      layer_cache = None if cache is None else (cache.k[i], cache.v[i])
      rate = self.drop_path * i / max(self.depth - 1, 1)
      x_BLD, nc = Block(self.heads, self.kv_heads or self.heads, self.mlp_ratio, self.mlp, self.norm,
                        self.qk_norm, self.qkv_bias, self.adaln, self.impl, self.out_bias, rate, self.norm_eps,
                        name=f"block{i}")(x_BLD, mask, angles, cond_BC, layer_cache, index, train, rope_keep,
                                         adaln_keep_BL)
      if nc is not None:
        new_k.append(nc[0])
        new_v.append(nc[1])
    x_BLD = layers.norm(self.norm, "final_norm", use_scale=not self.adaln, eps=self.norm_eps)(x_BLD)
    if self.adaln:
      shift, scale = layers.AdaLNModulation(d, 2, name="final_adaln")(cond_BC, adaln_keep_BL)
      x_BLD = layers.modulate(x_BLD, shift, scale)
    new_cache = None if cache is None else cache_lib.advance(cache, new_k, new_v, l)
    return x_BLD, new_cache
