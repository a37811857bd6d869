"""Plain jnp references for the kernels: dense masked softmax attention, fully masked rows -> 0."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def masked_attention(q_BQHD, k_BKGD, v_BKGD, visible, sm_scale=None):
  """Softmax attention where `visible` (broadcastable to [B, H, Q, K]) says who sees whom."""
  b, lq, h, d = q_BQHD.shape
  rep = h // k_BKGD.shape[2]
  k_BKHD = jnp.repeat(k_BKGD, rep, axis=2)
  v_BKHD = jnp.repeat(v_BKGD, rep, axis=2)
  scale = d ** -0.5 if sm_scale is None else sm_scale
  s_BHQK = jnp.einsum("bqhd,bkhd->bhqk", q_BQHD, k_BKHD, preferred_element_type=jnp.float32)
  s_BHQK = jnp.where(visible, s_BHQK * scale, -1e30)
  e_BHQK = jnp.where(visible, jnp.exp(s_BHQK - s_BHQK.max(-1, keepdims=True)), 0.0)
  l_BHQ1 = e_BHQK.sum(-1, keepdims=True)
  p_BHQK = e_BHQK / jnp.where(l_BHQ1 > 0, l_BHQ1, 1.0)
  out = jnp.einsum("bhqk,bkhd->bqhd", p_BHQK, v_BKHD.astype(jnp.float32))
  return out.astype(q_BQHD.dtype)


def attention_reference(q, k, v, mask, *, q_offset=0, sm_scale=None):
  """flash_attention's reference: the MaskSpec's dense mask, q [B,Lq,H,D], k/v [B,Lk,Hkv,D]."""
  visible_QK = mask.dense(q.shape[1], k.shape[1], q_offset)
  return masked_attention(q, k, v, jnp.asarray(visible_QK), sm_scale)


def cache_positions(lengths, size, window=None, sink=0):
  """Absolute position held by each cache slot, int32 [B, size]; -1 where a slot is empty.

  Contiguous (window=None): slot s holds position s while s < length. Ring: slots [0, sink)
  hold positions [0, sink); position p >= sink lives at slot sink + (p - sink) % window, so a
  ring slot holds the newest position p < length congruent to it.
  """
  n_B1 = jnp.asarray(lengths, jnp.int32)[:, None]
  s_1S = jnp.arange(size, dtype=jnp.int32)[None, :]
  if window is None:
    return jnp.where(s_1S < n_B1, s_1S, -1)
  r_1S = s_1S - sink
  newest = sink + r_1S + window * ((n_B1 - 1 - sink - r_1S) // window)
  pos = jnp.where(s_1S < sink, s_1S, newest)
  return jnp.where((s_1S < n_B1) & (s_1S < sink + window), pos, -1)


def decode_attention_reference(q, k_cache, v_cache, lengths, *, window=None, sink=0, causal=True,
                               sm_scale=None):
  """decode_attention's reference (caches [B, Hkv, S, D]): the Lq queries are the last Lq of `lengths[b]`
  tokens."""
  lq = q.shape[1]
  pos_B1S = cache_positions(lengths, k_cache.shape[2], window, sink)[:, None, :]
  n_B11 = jnp.asarray(lengths, jnp.int32)[:, None, None]
  limit_BQ1 = n_B11 - lq + np.arange(lq)[None, :, None] if causal else n_B11 - 1
  visible_BQS = (pos_B1S >= 0) & (pos_B1S <= limit_BQ1)
  k_BSGD, v_BSGD = jnp.swapaxes(k_cache, 1, 2), jnp.swapaxes(v_cache, 1, 2)
  return masked_attention(q, k_BSGD, v_BSGD, visible_BQS[:, None], sm_scale)
