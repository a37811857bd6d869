"""Masked multi-head attention with an implementation switch.

`impl="xla"` is the jnp reference (runs everywhere); `impl="pallas"` calls kernels_pallas; `"auto"`
uses Pallas on TPU where the kernels support the combination, on CPU the C++ decode kernel
(`arjax.nn.cpu_attention`) for cached attention with few query rows, and XLA elsewhere. An explicit
`"pallas"` request that cannot be served raises at trace time saying why.

Two entry points: `attention` (no cache: keys are the queries' sequence, a static query offset, the
flash kernel's block tables) and `cached_attention` (keys are KV-cache slots carrying their sequence
indices, -1 = empty; the mask is evaluated on sequence indices, per row).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from arjax import cache as cache_lib
from arjax.nn import cpu_attention
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
  k_BGKD, v_BGKD = (a.values() if isinstance(a, cache_lib.Int8Layer) else a for a in (k_BGKD, v_BGKD))
  b, lq, h, d = q_BQHD.shape
  g, lk = k_BGKD.shape[1], k_BGKD.shape[2]
  q_idx_BQ = jnp.arange(lq, dtype=jnp.int32)[None] if q_idx_BQ is None else jnp.asarray(q_idx_BQ)
  k_idx_BK = jnp.arange(lk, dtype=jnp.int32)[None] if k_idx_BK is None else jnp.asarray(k_idx_BK)
  r = h // g
  # Query heads of a group fold into the query axis (m = r * lq): two plain [B, G] batched products with the
  # keys minor in the logits, and the scale applied to q, not to the [M, K] logits (on XLA:CPU the 5-D
  # 'bqgrd,bgkd->bgrqk' form with scaled logits was ~1.7x slower: scripts/bench_xla_attention.py).
  q_BGMD = _fold_heads(q_BQHD, g, sm_scale).astype(k_BGKD.dtype)  # a bf16 cache: bf16 operands, f32 accumulation
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
  return _unfold_heads(out, lq).astype(q_BQHD.dtype)


def _fold_heads(q_BQHD, kv_heads: int, sm_scale=None):
  """Scaled queries [B, Q, H, D] -> [B, G, M, D]: the H / G query heads of a kv group fold into m = r * Q + q."""
  b, lq, h, d = q_BQHD.shape
  if h % kv_heads:
    raise ValueError(f"query heads {h} must be a multiple of kv heads {kv_heads}")
  q_BQHD = q_BQHD * (d ** -0.5 if sm_scale is None else sm_scale)
  return q_BQHD.reshape(b, lq, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, -1, d)


def _unfold_heads(out_BGMD, lq: int):
  """_fold_heads' layout back: [B, G, M, D] -> [B, Q, H, D]."""
  b, g, m, d = out_BGMD.shape
  return out_BGMD.reshape(b, g, m // lq, lq, d).transpose(0, 3, 1, 2, 4).reshape(b, lq, -1, d)


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

  seen = None if whole_unit and filled else mask
  xla = lambda: xla_attention(q_BQHD, k_BGSD, v_BGSD, seen, q_idx_BQ=q_idx_BQ, k_idx_BK=pos_BS, sm_scale=sm_scale)
  if impl == "auto" and _cpu_serves(mask, whole_unit, q_BQHD, k_BGSD, v_BGSD):
    return _cpu_cached(seen, whole_unit, sm_scale, q_BQHD, k_BGSD, v_BGSD, q_idx_BQ, pos_BS)
  if isinstance(k_BGSD, cache_lib.Int8Layer) and impl == "pallas":
    raise ValueError("attention impl='pallas' cannot serve an int8 KV cache (XLA dequantises it, the CPU kernel "
                     "reads it)")
  return _dispatch(impl, reason, mask, q_BQHD, k_BGSD, xla, pallas)


def _cpu_serves(mask, whole_unit, q_BQHD, k_BGSD, v_BGSD) -> bool:
  """Whether the CPU decode kernel takes this call: causal masks or whole units, head dim <= 256, and few query rows
  per kv head or its many-row path (AVX512F, head dim a multiple of 64)."""
  rows = q_BQHD.shape[1] * q_BQHD.shape[2] // k_BGSD.shape[1]
  masked = not is_runtime(mask) and (whole_unit or isinstance(mask, masks_lib.Causal))
  dtypes = {jnp.dtype(k_BGSD.dtype), jnp.dtype(v_BGSD.dtype)} <= set(cpu_attention.TARGETS)
  d = q_BQHD.shape[-1]
  rows_ok = rows <= cpu_attention.MAX_ROWS or cpu_attention.many_rows(k_BGSD.dtype, rows, d)
  small = rows_ok and d <= cpu_attention.MAX_HEAD_DIM
  return masked and dtypes and small and cpu_attention.available()


def _cpu_forward(whole_unit, sm_scale, q_BQHD, k_BGSD, v_BGSD, q_idx_BQ, pos_BS):
  lq, g = q_BQHD.shape[1], k_BGSD.shape[1]
  q_BGMD = _fold_heads(q_BQHD.astype(jnp.float32), g, sm_scale)
  rows = q_BGMD.shape[2] // lq
  if whole_unit:  # the unit sees every written slot
    limit_BM = jnp.full((1, q_BGMD.shape[2]), jnp.iinfo(jnp.int32).max, jnp.int32)
  else:  # causal: slots holding indices <= the query's own
    q_idx_BQ = jnp.asarray(q_idx_BQ, jnp.int32)
    limit_BM = jnp.broadcast_to(q_idx_BQ[:, None], (q_idx_BQ.shape[0], rows, lq)).reshape(q_idx_BQ.shape[0], -1)
  int8 = isinstance(k_BGSD, cache_lib.Int8Layer)
  parts = lambda a: (a.q, a.scale) if int8 else (a, None)
  (k, k_scale), (v, v_scale) = parts(k_BGSD), parts(v_BGSD)
  out = cpu_attention.decode_attention(q_BGMD, k, v, pos_BS, limit_BM, k_scale, v_scale)
  return _unfold_heads(out, lq).astype(q_BQHD.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _cpu_cached(mask, whole_unit, sm_scale, q_BQHD, k_BGSD, v_BGSD, q_idx_BQ, pos_BS):
  """The CPU kernel forward; its gradients are xla_attention's (LongLive's long tuning trains through a cache)."""
  return _cpu_forward(whole_unit, sm_scale, q_BQHD, k_BGSD, v_BGSD, q_idx_BQ, pos_BS)


def _cpu_cached_fwd(mask, whole_unit, sm_scale, q_BQHD, k_BGSD, v_BGSD, q_idx_BQ, pos_BS):
  out = _cpu_forward(whole_unit, sm_scale, q_BQHD, k_BGSD, v_BGSD, q_idx_BQ, pos_BS)
  return out, (q_BQHD, k_BGSD, v_BGSD, q_idx_BQ, pos_BS)


def _cpu_cached_bwd(mask, whole_unit, sm_scale, res, g_BQHD):
  q_BQHD, k_BGSD, v_BGSD, q_idx_BQ, pos_BS = res
  ref = lambda q, k, v: xla_attention(q, k, v, mask, q_idx_BQ=q_idx_BQ, k_idx_BK=pos_BS, sm_scale=sm_scale)
  return (*jax.vjp(ref, q_BQHD, k_BGSD, v_BGSD)[1](g_BQHD), None, None)


_cpu_cached.defvjp(_cpu_cached_fwd, _cpu_cached_bwd)
