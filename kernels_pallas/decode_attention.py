"""Split-K decode attention: a few queries against a KV cache with per-row valid lengths.

Cache layouts (k_cache/v_cache [B, Hkv, S, D], head-major: a (batch, kv head) is one contiguous [S, D] run;
`n = lengths[b]` tokens written so far):
  * contiguous (window=None): slot s holds position s; slots s >= n are empty.
  * ring with sink (LongLive; S == sink + window): slots [0, sink) hold positions [0, sink)
    forever; slots [sink, sink + window) are a ring for positions p >= sink, position p at slot
    sink + (p - sink) % window. A ring slot holds the newest position written there, so the
    cache holds exactly {0..sink-1} ∪ {max(sink, n - window) .. n-1}.
In both layouts slot s has been written iff s < n. The Lq queries are the last Lq of the n
tokens (positions n - Lq + i, already written to the cache) and see the cached positions
<= their own (causal=True) or all cached positions (causal=False: bidirectional among the
queries, e.g. a VAR scale or a frame). With a ring each query sees what the cache holds, so a
per-query sliding window of w tokens needs window = w + Lq - 1.

The grid runs over (batch, kv head, cache chunk); each chunk writes a partial output and its
log-sum-exp, merged in jnp. The q heads sharing a kv head are processed together as rows.
Chunks past the last written slot are skipped (their index_map re-points at the last
written chunk, so no new DMA).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.flash_attention import NEG_INF, supported

DEFAULT_CHUNK = 512
_TRANS_B = (((1,), (1,)), ((), ()))


def _slot_positions(slot, n, head, *, window, sink):
  """Position held by each slot (contiguous or ring), without integer division."""
  if window is None:
    return slot
  r = slot - sink
  age = head - r + window * (r > head).astype(jnp.int32)  # head: ring offset of position n - 1
  return jnp.where(slot < sink, slot, n - 1 - age)


def _decode_kernel(n_ref, head_ref, last_ref, q_ref, limit_ref, k_ref, v_ref, o_ref, lse_ref, *,
                   chunk, size, scale, window, sink):
  b, c = pl.program_id(0), pl.program_id(2)
  n = n_ref[b]

  @pl.when(c <= last_ref[b])
  def _compute():
    v = v_ref[...]
    s = lax.dot_general(q_ref[...], k_ref[...], _TRANS_B, preferred_element_type=jnp.float32)
    slot = c * chunk + lax.broadcasted_iota(jnp.int32, s.shape, 1)
    pos = _slot_positions(slot, n, head_ref[b], window=window, sink=sink)
    visible = (slot < n) & (slot < size) & (pos <= limit_ref[...])
    s = jnp.where(visible, s * scale, NEG_INF)
    m = s.max(axis=1, keepdims=True)
    p = jnp.where(visible, jnp.exp(s - m), 0.0)
    l = p.sum(axis=1, keepdims=True)
    seen = l > 0.0
    l_safe = jnp.where(seen, l, 1.0)
    o_ref[...] = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32) / l_safe
    lse_ref[...] = jnp.where(seen, m + jnp.log(l_safe), NEG_INF)

  @pl.when(c > last_ref[b])
  def _skip():
    o_ref[...] = jnp.zeros(o_ref.shape, o_ref.dtype)
    lse_ref[...] = jnp.full(lse_ref.shape, NEG_INF, lse_ref.dtype)


def _validate(q, k_cache, v_cache, lengths, window, sink, backend):
  if k_cache.shape != v_cache.shape:
    raise ValueError(f"k_cache and v_cache must match [B, Hkv, S, D], got {k_cache.shape}, "
                     f"{v_cache.shape}")
  ok, why = supported(None, q.shape, k_cache.shape, q.dtype, backend, kernel="decode")
  if not ok:
    raise ValueError(f"decode_attention cannot serve q {q.shape} {q.dtype}, cache "
                     f"{k_cache.shape} on {backend}: {why}")
  if lengths.shape != (q.shape[0],):
    raise ValueError(f"lengths must be int [B={q.shape[0]}], got shape {lengths.shape}")
  if window is not None:
    if window < q.shape[1] or sink < 0 or k_cache.shape[2] != sink + window:
      raise ValueError(f"ring cache needs window >= Lq={q.shape[1]}, sink >= 0 and cache size "
                       f"S == sink + window; got window={window}, sink={sink}, "
                       f"S={k_cache.shape[2]}")
  elif sink:
    raise ValueError(f"sink={sink} needs a ring cache (window=...)")


def decode_attention(q, k_cache, v_cache, lengths, *, window=None, sink=0, causal=True,
                     block_k=None, sm_scale=None, interpret=None):
  """Attention of q [B, Lq, H, D] (the last Lq tokens) over a KV cache [B, Hkv, S, D]."""
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  lengths = jnp.asarray(lengths)
  _validate(q, k_cache, v_cache, lengths, window, sink,
            "cpu" if interpret else jax.default_backend())
  b, lq, h, d = q.shape
  hk, size = k_cache.shape[1], k_cache.shape[2]
  rep, rows = h // hk, h // hk * lq
  chunk = min(DEFAULT_CHUNK, -(-size // 8) * 8) if block_k is None else int(block_k)
  n_chunks = -(-size // chunk)
  scale = d ** -0.5 if sm_scale is None else float(sm_scale)

  # rows r = g * Lq + i: q head hk * rep + g, query i (position n - Lq + i)
  q_BGRD = q.reshape(b, lq, hk, rep, d).transpose(0, 2, 3, 1, 4).reshape(b, hk, rows, d)
  n_B = lengths.astype(jnp.int32)
  query_R = np.tile(np.arange(lq, dtype=np.int32), rep)
  limit_BR1 = (n_B[:, None] - lq + query_R[None] if causal else
               jnp.broadcast_to(n_B[:, None] - 1, (b, rows)))[..., None]
  head_B = (n_B - 1 - sink) % window if window is not None else jnp.zeros_like(n_B)
  last_B = jnp.maximum(jnp.minimum(n_B, size) - 1, 0) // chunk
  pad = n_chunks * chunk - size
  kv = [jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) if pad else x for x in (k_cache, v_cache)]

  kv_map = lambda b_, g, c, n, head, last: (b_, g, jnp.minimum(c, last[b_]), 0)
  part_map = lambda b_, g, c, n, head, last: (b_, g, c, 0, 0)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=3, grid=(b, hk, n_chunks),
      in_specs=[pl.BlockSpec((None, None, rows, d), lambda b_, g, c, *_: (b_, g, 0, 0)),
                pl.BlockSpec((None, rows, 1), lambda b_, g, c, *_: (b_, 0, 0)),
                pl.BlockSpec((None, None, chunk, d), kv_map),
                pl.BlockSpec((None, None, chunk, d), kv_map)],
      out_specs=[pl.BlockSpec((None, None, None, rows, d), part_map),
                 pl.BlockSpec((None, None, None, rows, 1), part_map)])
  kernel = functools.partial(_decode_kernel, chunk=chunk, size=size, scale=scale, window=window,
                             sink=sink)
  o_part, lse_part = pl.pallas_call(
      kernel, grid_spec=grid_spec, interpret=interpret, name="decode_attention",
      out_shape=[jax.ShapeDtypeStruct((b, hk, n_chunks, rows, d), jnp.float32),
                 jax.ShapeDtypeStruct((b, hk, n_chunks, rows, 1), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel")),
  )(n_B, head_B, last_B, q_BGRD, limit_BR1, *kv)

  w = jnp.exp(lse_part - lse_part.max(axis=2, keepdims=True))  # all-empty rows: w = 1, o = 0
  out_BGRD = (w * o_part).sum(axis=2) / w.sum(axis=2)
  out = out_BGRD.reshape(b, hk, rep, lq, d).transpose(0, 3, 1, 2, 4).reshape(b, lq, h, d)
  return out.astype(q.dtype)
