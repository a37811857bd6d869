"""Masked multi-head attention with an implementation switch.

`impl="xla"` is the jnp reference (runs everywhere); `impl="pallas"` calls kernels_pallas; `"auto"`
uses Pallas on TPU where the kernels support the combination and XLA elsewhere. An explicit
`"pallas"` request that cannot be served raises at trace time saying why.

Two entry points: `attention` (no cache: keys are the queries' sequence, a static query offset, the
flash kernel's block tables) and `cached_attention` (keys are KV-cache slots carrying their sequence
indices, -1 = empty; the mask is evaluated on sequence indices, per row).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas import masks as masks_lib

IMPLS = ("auto", "xla", "pallas")


def is_runtime(mask) -> bool:
  """Whether `mask` is only known at run time (e.g. `ranked`): its `mask_fn` is missing or raises, so it has
  no static block table and `allowed` is its only view."""
  if hasattr(mask, "is_runtime"):
    return bool(mask.is_runtime)
  try:
    mask.mask_fn(np.zeros((1, 1), np.int32), np.zeros((1, 1), np.int32))
  except (AttributeError, NotImplementedError, TypeError):
    return True
  return False


def xla_attention(q_BQHD, k_BGKD, v_BGKD, mask, *, q_idx_BQ=None, k_idx_BK=None, sm_scale=None):
  """Reference attention over explicit sequence indices (default arange; batch dim may be 1;
  keys with index < 0 are empty); keys and values head-major [B, G, K, D], as the KV cache holds them.
  mask=None: every query sees every key. Fully masked rows are zeros."""
  b, lq, h, d = q_BQHD.shape
  g, lk = k_BGKD.shape[1], k_BGKD.shape[2]
  if h % g:
    raise ValueError(f"query heads {h} must be a multiple of kv heads {g}")
  q_idx_BQ = jnp.arange(lq, dtype=jnp.int32)[None] if q_idx_BQ is None else jnp.asarray(q_idx_BQ)
  k_idx_BK = jnp.arange(lk, dtype=jnp.int32)[None] if k_idx_BK is None else jnp.asarray(k_idx_BK)
  scale = d ** -0.5 if sm_scale is None else sm_scale
  r = h // g
  # Query heads of a group fold into the query axis (m = r * lq): two plain [B, G] batched products with the
  # keys minor in the logits, and the scale applied to q, not to the [M, K] logits (on XLA:CPU the 5-D
  # 'bqgrd,bgkd->bgrqk' form with scaled logits was ~1.7x slower: scripts/bench_xla_attention.py).
  q_BGMD = (q_BQHD * scale).astype(k_BGKD.dtype)  # a bf16 cache: bf16 operands, f32 accumulation
  q_BGMD = q_BGMD.reshape(b, lq, g, r, d).transpose(0, 2, 3, 1, 4).reshape(b, g, r * lq, d)
  logits = jnp.einsum("bgmd,bgkd->bgmk", q_BGMD, k_BGKD, preferred_element_type=jnp.float32)
  if mask is not None:  # None: every key is visible to every query (no select pass over the logits)
    allowed_BQK = mask.allowed(q_idx_BQ, k_idx_BK) & (k_idx_BK >= 0)[:, None, :]
    allowed = jnp.broadcast_to(allowed_BQK[:, None, None], (b, 1, r, lq, lk)).reshape(b, 1, r * lq, lk)
    logits = jnp.where(allowed, logits, -jnp.inf)
  m = jnp.max(logits, axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  # unnormalised weights in the values' dtype; the output is divided by their sum (in f32) after the product: one
  # pass over [M, D] instead of [M, K], and the weights that multiply the values are the ones summed
  p = jnp.exp(logits - m).astype(v_BGKD.dtype)
  denom = p.sum(-1, keepdims=True, dtype=jnp.float32)
  out = jnp.einsum("bgmk,bgkd->bgmd", p, v_BGKD, preferred_element_type=jnp.float32)
  out = out / jnp.where(denom == 0, 1.0, denom)
  return out.reshape(b, g, r, lq, d).transpose(0, 3, 1, 2, 4).reshape(b, lq, h, d).astype(q_BQHD.dtype)


def _dispatch(impl, reason, mask, q, k, xla, pallas):
  """xla() or pallas() by impl and `reason` (None: Pallas can serve it)."""
  if impl not in IMPLS:
    raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")
  if impl == "xla" or (impl == "auto" and (reason is not None or jax.default_backend() != "tpu")):
    return xla()
  if reason is not None:
    name = type(mask).__name__ if is_runtime(mask) else mask  # a run-time mask's repr holds its arrays
    raise ValueError(f"attention impl='pallas' cannot serve {name} with q {q.shape}, k {k.shape}: {reason}")
  return pallas()


def _supported(mask, q, k, kernel):
  import kernels_pallas
  ok, reason = kernels_pallas.supported(mask, q.shape, k.shape, q.dtype, jax.default_backend(), kernel=kernel)
  return None if ok else reason


def attention(q_BQHD, k_BKGD, v_BKGD, mask, *, q_offset: int = 0, sm_scale=None, impl="auto"):
  """No cache: query i has sequence index q_offset + i, key j index j. Pallas: the flash kernel."""
  if is_runtime(mask):
    reason = "a run-time mask (no static block table) is served by XLA only"
  elif not isinstance(q_offset, int):
    reason = "flash_attention needs a static q_offset"
  else:
    reason = _supported(mask, q_BQHD, k_BKGD, "flash")

  def pallas():
    import kernels_pallas
    return kernels_pallas.flash_attention(q_BQHD, k_BKGD, v_BKGD, mask, q_offset=q_offset, sm_scale=sm_scale)

  xla = lambda: xla_attention(q_BQHD, jnp.swapaxes(k_BKGD, 1, 2), jnp.swapaxes(v_BKGD, 1, 2), mask,
                              q_idx_BQ=jnp.arange(q_BQHD.shape[1])[None] + q_offset, sm_scale=sm_scale)
  return _dispatch(impl, reason, mask, q_BQHD, k_BKGD, xla, pallas)


def cached_attention(q_BQHD, k_BGSD, v_BGSD, mask, q_idx_BQ, pos_BS, *, window=None, sink=0, whole_unit=False,
                     filled=False, sm_scale=None, impl="auto"):
  """Queries at sequence indices q_idx_BQ = end_B + [0, Q) (already written) against cache slots [B, G, S, D]
  holding indices pos_BS (-1 empty). Pallas (decode kernel, lengths end_B + Q): causal masks (causal=True) and
  `whole_unit` calls, where the queries are one whole AR unit seeing every cached key and each other
  (causal=False); a promise by the caller: XLA evaluates `mask` either way, unless `filled` (with whole_unit)
  says that every slot is written, so the unit sees all of them: then XLA skips the mask."""
  if is_runtime(mask):
    reason = "a run-time mask is served by XLA only"
  elif not (whole_unit or isinstance(mask, masks_lib.Causal)):
    reason = (f"cached decoding with {mask} is served by XLA only (decode_attention takes causal masks or "
              "whole_unit=True calls)")
  else:
    reason = _supported(mask, q_BQHD, k_BGSD, "decode")

  def pallas():
    import kernels_pallas
    lengths_B = jnp.broadcast_to(q_idx_BQ[:, -1] + 1, (q_BQHD.shape[0],))
    return kernels_pallas.decode_attention(q_BQHD, k_BGSD, v_BGSD, lengths_B, window=window, sink=sink,
                                           causal=not whole_unit, sm_scale=sm_scale)

  xla = lambda: xla_attention(q_BQHD, k_BGSD, v_BGSD, None if whole_unit and filled else mask, q_idx_BQ=q_idx_BQ,
                              k_idx_BK=pos_BS, sm_scale=sm_scale)
  return _dispatch(impl, reason, mask, q_BQHD, k_BGSD, xla, pallas)
