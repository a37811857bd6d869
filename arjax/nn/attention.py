"""Masked multi-head attention with an implementation switch.

`impl="xla"` is the jnp reference (runs everywhere); `impl="pallas"` calls kernels_pallas; `"auto"`
uses Pallas on TPU where the kernels support the combination and XLA elsewhere. An explicit
`"pallas"` request that cannot be served raises at trace time saying why.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas import masks as masks_lib

IMPLS = ("auto", "xla", "pallas")


def xla_attention(q_BQHD, k_BKGD, v_BKGD, mask: masks_lib.MaskSpec, *, q_offset=0, kv_valid_B=None,
                  sm_scale=None):
  """Reference attention; q_offset and kv_valid_B (per-row valid cache length) may be traced."""
  b, lq, h, d = q_BQHD.shape
  lk, g = k_BKGD.shape[1], k_BKGD.shape[2]
  if h % g:
    raise ValueError(f"query heads {h} must be a multiple of kv heads {g}")
  scale = d ** -0.5 if sm_scale is None else sm_scale
  q = q_BQHD.reshape(b, lq, g, h // g, d)
  logits = jnp.einsum("bqgrd,bkgd->bgrqk", q, k_BKGD, preferred_element_type=jnp.float32) * scale
  q_pos = jnp.arange(lq)[:, None] + q_offset
  k_pos = jnp.arange(lk)[None, :]
  allowed_QK = mask.mask_fn(q_pos, k_pos)
  allowed = jnp.broadcast_to(allowed_QK, (b, 1, 1, lq, lk))
  if kv_valid_B is not None:
    allowed = allowed & (k_pos < kv_valid_B[:, None, None, None, None])
  logits = jnp.where(allowed, logits, -jnp.inf)
  m = jnp.max(logits, axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.exp(logits - m)
  denom = p.sum(-1, keepdims=True)
  p = p / jnp.where(denom == 0, 1.0, denom)
  out = jnp.einsum("bgrqk,bkgd->bqgrd", p.astype(v_BKGD.dtype), v_BKGD)
  return out.reshape(b, lq, h, d)


def _pallas_reason(mask, q, k, cached: bool, static_offset: bool):
  """None if a Pallas kernel can serve this call, else why not."""
  import kernels_pallas
  backend = jax.default_backend()
  if cached:
    # The KV cache is contiguous with the queries as its last entries: causal decoding is exactly
    # decode_attention(causal=True); other masks need positions the decode kernel does not take.
    if not isinstance(mask, masks_lib.Causal):
      return f"cached decoding with {mask} is served by XLA only (decode_attention takes causal masks)"
    ok, reason = kernels_pallas.supported(mask, q.shape, k.shape, q.dtype, backend, kernel="decode")
    return None if ok else reason
  if not static_offset:
    return "flash_attention needs a static q_offset"
  ok, reason = kernels_pallas.supported(mask, q.shape, k.shape, q.dtype, backend)
  return None if ok else reason


def attention(q_BQHD, k_BKGD, v_BKGD, mask, *, q_offset=0, kv_valid_B=None, sm_scale=None, impl="auto"):
  """Dispatches to the XLA reference, the Pallas block-sparse kernel or the Pallas decode kernel.

  With kv_valid_B (a KV cache), the queries are the last q_len of the kv_valid_B[b] valid entries.
  """
  if impl not in IMPLS:
    raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")
  xla = lambda: xla_attention(q_BQHD, k_BKGD, v_BKGD, mask, q_offset=q_offset, kv_valid_B=kv_valid_B,
                              sm_scale=sm_scale)
  if impl == "xla":
    return xla()
  reason = _pallas_reason(mask, q_BQHD, k_BKGD, kv_valid_B is not None, isinstance(q_offset, int))
  if impl == "auto" and (reason is not None or jax.default_backend() != "tpu"):
    return xla()
  if reason is not None:
    raise ValueError(f"attention impl='pallas' cannot serve {mask} with q {q_BQHD.shape}, "
                     f"k {k_BKGD.shape}: {reason}")
  import kernels_pallas
  if kv_valid_B is not None:
    return kernels_pallas.decode_attention(q_BQHD, k_BKGD, v_BKGD, kv_valid_B, causal=True, sm_scale=sm_scale)
  return kernels_pallas.flash_attention(q_BQHD, k_BKGD, v_BKGD, mask, q_offset=q_offset, sm_scale=sm_scale)
