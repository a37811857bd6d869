"""Block-sparse flash attention (forward + custom_vjp backward) driven by a MaskSpec block table.

Layout inside the kernels is head-major, q `[B, H, Lq_pad, D]`, k/v `[B, Hkv, Lk_pad, D]`.
The static block table of the mask is compacted in numpy at trace time into, per q block, the
list of its non-empty kv blocks (and, for dk/dv, per kv block the list of its non-empty q
blocks). The lists are scalar-prefetched (`pltpu.PrefetchScalarGridSpec`): the innermost grid
axis walks a list, its index_map fetches the listed block, and padding entries (kind 0) repeat
the previous block index (no new DMA) and skip all compute. `mask.mask_fn` is evaluated only
on partial blocks; full blocks run unmasked. Fully masked query rows give zeros.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas import masks

NEG_INF = -0.7 * float(np.finfo(np.float32).max)  # finite "minus infinity": no inf - inf NaNs
DEFAULT_BLOCK = 128
_TRANS_B = (((1,), (1,)), ((), ()))  # x @ y.T
_SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16)
# (batch, head, outer block, inner list): the list axis accumulates into scratch
_SEMANTICS = pltpu.CompilerParams(
    dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


@dataclasses.dataclass(frozen=True)
class FlashConfig:
  """Everything static about one flash_attention call (hashable: it keys the table cache)."""
  mask: masks.MaskSpec
  q_offset: int
  q_len: int
  kv_len: int
  block_q: int
  block_k: int
  sm_scale: float
  interpret: bool

  @property
  def n_q(self):
    return math.ceil(self.q_len / self.block_q)

  @property
  def n_k(self):
    return math.ceil(self.kv_len / self.block_k)


def default_block(length: int) -> int:
  """min(128, length rounded up to a multiple of 8): the default block along one axis."""
  return min(DEFAULT_BLOCK, -(-length // 8) * 8)


def supported(mask, q_shape, k_shape, dtype, backend, *, kernel="flash") -> tuple[bool, str]:
  """Whether `kernel` ('flash' | 'decode') serves this call on `backend`, and why (not).

  backend is jax.default_backend()-like: 'cpu' (interpret mode), 'tpu' or 'gpu'. For 'decode',
  `mask` is ignored and k_shape is the cache's [B, Hkv, S, D].
  """
  if kernel not in ("flash", "decode"):
    return False, f"unknown kernel {kernel!r} (expected 'flash' or 'decode')"
  if kernel == "flash" and not isinstance(mask, masks.MaskSpec):
    return False, f"mask must be a kernels_pallas.masks.MaskSpec, got {type(mask).__name__}"
  if len(q_shape) != 4 or len(k_shape) != 4:
    return False, f"q and k must be [B, L, H, D], got q {tuple(q_shape)}, k {tuple(k_shape)}"
  (b, lq, h, d), (bk, lk, hk, dk) = q_shape, k_shape
  if kernel == "decode":
    bk, hk, lk, dk = k_shape
  if b != bk or d != dk:
    return False, f"batch/head_dim differ: q {tuple(q_shape)} vs k {tuple(k_shape)}"
  if min(lq, lk, h, hk, d) <= 0 or h % hk:
    return False, f"need positive sizes and q heads {h} a multiple of kv heads {hk}"
  if jnp.dtype(dtype) not in [jnp.dtype(t) for t in _SUPPORTED_DTYPES]:
    return False, f"dtype {jnp.dtype(dtype).name} not supported (float32, bfloat16)"
  if backend == "gpu":
    return False, ("no GPU lowering: the kernels are written for Mosaic TPU (the Pallas Triton "
                   "backend is deprecated); use the XLA/cuDNN path on GPU")
  if backend not in ("cpu", "tpu"):
    return False, f"unknown backend {backend!r}"
  return True, "interpret mode (slow, for tests)" if backend == "cpu" else "Mosaic TPU kernel"


def compact_rows(table: np.ndarray):
  """Per row of an int8 block table: (indices, kinds) of its non-empty columns, padded.

  Returns int32 arrays [n_rows, width], width = max(1, max non-empty per row). Padding entries
  have kind 0 (masks.EMPTY) and repeat the row's last listed index (0 for an empty row).
  """
  counts = (table != masks.EMPTY).sum(axis=1)
  width = max(1, int(counts.max(initial=0)))
  idx = np.zeros((table.shape[0], width), np.int32)
  kind = np.zeros((table.shape[0], width), np.int32)
  for r, row in enumerate(table):
    cols = np.flatnonzero(row)
    idx[r, :len(cols)] = cols
    idx[r, len(cols):] = cols[-1] if len(cols) else 0
    kind[r, :len(cols)] = row[cols]
  return idx, kind


@functools.lru_cache(maxsize=256)
def block_lists(cfg: FlashConfig, rep: int):
  """Scalar-prefetch tables: forward/dq per q block, and dk/dv per kv block over `rep` heads."""
  table = cfg.mask.block_table(cfg.q_len, cfg.kv_len, cfg.block_q, cfg.block_k, cfg.q_offset)
  q_idx, q_kind = compact_rows(table)  # per q block: kv blocks
  k_idx, k_kind = compact_rows(table.T)  # per kv block: q blocks
  width = k_idx.shape[1]
  k_head = np.repeat(np.arange(rep, dtype=np.int32), width)[None].repeat(k_idx.shape[0], 0)
  flat = lambda a: np.ascontiguousarray(a.reshape(-1))
  return dict(table=table, q_width=q_idx.shape[1], q_idx=flat(q_idx), q_kind=flat(q_kind),
              k_width=rep * width, k_idx=flat(np.tile(k_idx, (1, rep))),
              k_kind=flat(np.tile(k_kind, (1, rep))), k_head=flat(k_head))


def _visible(cfg: FlashConfig, q_block, kv_block, shape):
  """Mask of a [block_q, block_k] tile: mask_fn on absolute positions, minus the padding."""
  q_pos = cfg.q_offset + q_block * cfg.block_q + lax.broadcasted_iota(jnp.int32, shape, 0)
  kv_pos = kv_block * cfg.block_k + lax.broadcasted_iota(jnp.int32, shape, 1)
  inside = (q_pos < cfg.q_offset + cfg.q_len) & (kv_pos < cfg.kv_len)
  return cfg.mask.mask_fn(q_pos, kv_pos) & inside


def _on_kind(kind, body):
  """Runs body(masked) for partial (masked) and full (unmasked) entries; skips padding."""
  pl.when(kind == masks.PARTIAL)(lambda: body(True))
  pl.when(kind == masks.FULL)(lambda: body(False))


def _scores(cfg, q, k, masked, q_block, kv_block):
  """Scaled scores s [bq, bk] (f32) and the visibility tile (None when unmasked)."""
  s = lax.dot_general(q, k, _TRANS_B, preferred_element_type=jnp.float32) * cfg.sm_scale
  if not masked:
    return s, None
  visible = _visible(cfg, q_block, kv_block, s.shape)
  return jnp.where(visible, s, NEG_INF), visible


def _fwd_kernel(idx_ref, kind_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *rest, cfg, width,
                count):
  cnt_ref, (m_sc, l_sc, acc_sc) = (rest[0], rest[1:]) if count else (None, rest)
  i, j = pl.program_id(2), pl.program_id(3)
  entry = i * width + j

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, NEG_INF, jnp.float32)
    l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)
    if count:
      cnt_ref[...] = jnp.zeros(cnt_ref.shape, jnp.int32)

  def body(masked):
    v = v_ref[...]
    s, visible = _scores(cfg, q_ref[...], k_ref[...], masked, i, idx_ref[entry])
    m_prev = m_sc[...]
    m_new = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
    p = jnp.exp(s - m_new)
    if masked:
      p = jnp.where(visible, p, 0.0)
    alpha = jnp.exp(m_prev - m_new)
    l_sc[...] = alpha * l_sc[...] + p.sum(axis=1, keepdims=True)
    acc_sc[...] = alpha * acc_sc[...] + jnp.dot(p.astype(v.dtype), v,
                                                preferred_element_type=jnp.float32)
    m_sc[...] = m_new
    if count:
      which = lax.broadcasted_iota(jnp.int32, cnt_ref.shape, 1) == (0 if masked else 1)
      cnt_ref[...] += which.astype(jnp.int32)

  _on_kind(kind_ref[entry], body)

  @pl.when(j == width - 1)
  def _finish():
    l = l_sc[...]
    seen = l > 0.0
    o_ref[...] = jnp.where(seen, acc_sc[...] / jnp.where(seen, l, 1.0), 0.0).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m_sc[...] + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)


def _q_major_specs(cfg: FlashConfig, rep: int, width: int, d: int):
  """BlockSpecs of the forward/dq grid (b, h, q block i, list entry j): q-like, row, kv."""
  q_map = lambda b, h, i, j, idx, kind: (b, h, i, 0)
  kv_map = lambda b, h, i, j, idx, kind: (b, h // rep, idx[i * width + j], 0)
  return (pl.BlockSpec((None, None, cfg.block_q, d), q_map),
          pl.BlockSpec((None, None, cfg.block_q, 1), q_map),
          pl.BlockSpec((None, None, cfg.block_k, d), kv_map))


def _forward(q, k, v, cfg: FlashConfig, count=False):
  """Forward pallas_call on padded head-major arrays: (out, lse[, visits [B, H, n_q, 2]])."""
  b, h, lq_pad, d = q.shape
  tabs = block_lists(cfg, h // k.shape[1])
  width, bq = tabs["q_width"], cfg.block_q
  q_spec, row_spec, kv_spec = _q_major_specs(cfg, h // k.shape[1], width, d)
  out_specs = [q_spec, row_spec]
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
               jax.ShapeDtypeStruct((b, h, lq_pad, 1), jnp.float32)]
  if count:  # interpret-mode debug output: (1, 2) blocks do not meet Mosaic's tiling rules
    out_specs.append(pl.BlockSpec((None, None, 1, 2), lambda b_, h_, i, *_: (b_, h_, i, 0)))
    out_shape.append(jax.ShapeDtypeStruct((b, h, cfg.n_q, 2), jnp.int32))
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2, grid=(b, h, cfg.n_q, width),
      in_specs=[q_spec, kv_spec, kv_spec], out_specs=out_specs,
      scratch_shapes=[pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, 1), jnp.float32),
                      pltpu.VMEM((bq, d), jnp.float32)])
  kernel = functools.partial(_fwd_kernel, cfg=cfg, width=width, count=count)
  return pl.pallas_call(
      kernel, grid_spec=grid_spec, out_shape=out_shape, interpret=cfg.interpret,
      compiler_params=_SEMANTICS, name="flash_attention_fwd",
  )(tabs["q_idx"], tabs["q_kind"], q, k, v)


def _probs_and_dscores(cfg, q, k, v, do, lse, delta, masked, q_block, kv_block):
  """Backward tile: probabilities p and score gradients ds (both f32 [bq, bk])."""
  s, visible = _scores(cfg, q, k, masked, q_block, kv_block)
  p = jnp.exp(s - lse)
  if masked:
    p = jnp.where(visible, p, 0.0)
  dp = lax.dot_general(do, v, _TRANS_B, preferred_element_type=jnp.float32)
  return p, p * (dp - delta)


def _dq_kernel(idx_ref, kind_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dq_sc,
               *, cfg, width):
  i, j = pl.program_id(2), pl.program_id(3)
  entry = i * width + j

  @pl.when(j == 0)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

  def body(masked):
    k = k_ref[...]
    _, ds = _probs_and_dscores(cfg, q_ref[...], k, v_ref[...], do_ref[...], lse_ref[...],
                               delta_ref[...], masked, i, idx_ref[entry])
    dq_sc[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  _on_kind(kind_ref[entry], body)

  @pl.when(j == width - 1)
  def _finish():
    dq_ref[...] = (dq_sc[...] * cfg.sm_scale).astype(dq_ref.dtype)


def _dkdv_kernel(idx_ref, kind_ref, head_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
                 dk_ref, dv_ref, dk_sc, dv_sc, *, cfg, width):
  kb, j = pl.program_id(2), pl.program_id(3)
  entry = kb * width + j

  @pl.when(j == 0)
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

  def body(masked):
    q, do = q_ref[...], do_ref[...]
    p, ds = _probs_and_dscores(cfg, q, k_ref[...], v_ref[...], do, lse_ref[...], delta_ref[...],
                               masked, idx_ref[entry], kb)
    dv_sc[...] += jnp.dot(p.astype(do.dtype).T, do, preferred_element_type=jnp.float32)
    dk_sc[...] += jnp.dot(ds.astype(q.dtype).T, q, preferred_element_type=jnp.float32)

  _on_kind(kind_ref[entry], body)

  @pl.when(j == width - 1)
  def _finish():
    dk_ref[...] = (dk_sc[...] * cfg.sm_scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _backward(cfg: FlashConfig, res, do):
  """dq over the per-q-block lists, then dk/dv over the transposed per-kv-block lists."""
  q, k, v, o, lse = res
  b, h, _, d = q.shape
  hk = k.shape[1]
  rep = h // hk
  tabs = block_lists(cfg, rep)
  bq, bk = cfg.block_q, cfg.block_k
  delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1, keepdims=True)

  qw = tabs["q_width"]
  q_spec, row_spec, kv_spec = _q_major_specs(cfg, rep, qw, d)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg, width=qw),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2, grid=(b, h, cfg.n_q, qw),
          in_specs=[q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec], out_specs=q_spec,
          scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)]),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), interpret=cfg.interpret,
      compiler_params=_SEMANTICS, name="flash_attention_dq",
  )(tabs["q_idx"], tabs["q_kind"], q, k, v, do, lse, delta)

  # grid (b, kv head g, kv block kb, entry j over the rep q heads of g x their q-block lists)
  kw = tabs["k_width"]
  q_map = lambda b_, g, kb, j, idx, kind, head: (b_, g * rep + head[kb * kw + j],
                                                 idx[kb * kw + j], 0)
  own_map = lambda b_, g, kb, j, idx, kind, head: (b_, g, kb, 0)
  q_spec = pl.BlockSpec((None, None, bq, d), q_map)
  row_spec = pl.BlockSpec((None, None, bq, 1), q_map)
  own_spec = pl.BlockSpec((None, None, bk, d), own_map)
  dk, dv = pl.pallas_call(
      functools.partial(_dkdv_kernel, cfg=cfg, width=kw),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=3, grid=(b, hk, cfg.n_k, kw),
          in_specs=[q_spec, own_spec, own_spec, q_spec, row_spec, row_spec],
          out_specs=[own_spec, own_spec],
          scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      interpret=cfg.interpret, compiler_params=_SEMANTICS, name="flash_attention_dkdv",
  )(tabs["k_idx"], tabs["k_kind"], tabs["k_head"], q, k, v, do, lse, delta)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _flash(q, k, v, cfg):
  return _forward(q, k, v, cfg)[0]


def _flash_fwd(q, k, v, cfg):
  o, lse = _forward(q, k, v, cfg)
  return o, (q, k, v, o, lse)


_flash.defvjp(_flash_fwd, _backward)


def _config(q, k, v, mask, q_offset, block_q, block_k, sm_scale, interpret) -> FlashConfig:
  """Validates a flash_attention call and freezes its static parameters."""
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape [B, Lk, Hkv, D], got {k.shape}, {v.shape}")
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  backend = "cpu" if interpret else jax.default_backend()
  ok, why = supported(mask, q.shape, k.shape, q.dtype, backend)
  if not ok:
    raise ValueError(f"flash_attention cannot serve q {q.shape} {q.dtype}, k {k.shape}, "
                     f"mask {mask} on {backend}: {why}")
  if not isinstance(q_offset, (int, np.integer)) or q_offset < 0:
    raise ValueError(f"q_offset must be a static python int >= 0, got {q_offset!r}")
  lq, lk = q.shape[1], k.shape[1]
  block_q = default_block(lq) if block_q is None else block_q
  block_k = default_block(lk) if block_k is None else block_k
  if min(block_q, block_k) <= 0:
    raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}")
  scale = q.shape[-1] ** -0.5 if sm_scale is None else float(sm_scale)
  return FlashConfig(mask, int(q_offset), lq, lk, int(block_q), int(block_k), scale,
                     bool(interpret))


def _to_kernel_layout(x_BLHD, block):
  """[B, L, H, D] -> [B, H, L_pad, D], zero-padded to a multiple of block."""
  pad = -x_BLHD.shape[1] % block
  return jnp.pad(x_BLHD, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)


def flash_attention(q, k, v, mask, *, q_offset=0, block_q=None, block_k=None, sm_scale=None,
                    interpret=None):
  """Block-sparse masked attention: q [B, Lq, H, D], k/v [B, Lk, Hkv, D] -> [B, Lq, H, D]."""
  cfg = _config(q, k, v, mask, q_offset, block_q, block_k, sm_scale, interpret)
  out = _flash(_to_kernel_layout(q, cfg.block_q), _to_kernel_layout(k, cfg.block_k),
               _to_kernel_layout(v, cfg.block_k), cfg)
  return out.transpose(0, 2, 1, 3)[:, :cfg.q_len]


def flash_attention_visits(q, k, v, mask, *, q_offset=0, block_q=None, block_k=None,
                           interpret=None):
  """Debug: int32 [B, H, n_q, 2] count of (partial, full) kv blocks the forward kernel computed."""
  cfg = _config(q, k, v, mask, q_offset, block_q, block_k, None, interpret)
  return _forward(_to_kernel_layout(q, cfg.block_q), _to_kernel_layout(k, cfg.block_k),
                  _to_kernel_layout(v, cfg.block_k), cfg, count=True)[2]
