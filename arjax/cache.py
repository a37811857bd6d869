"""Explicit KV cache pytrees: the caller owns the cache; prefill and extend are the same call.

Per layer, keys and values [B, G, S, D] in S slots (head-major: one (row, kv head) is a contiguous [S, D]
run, so decoding reads it in one pass instead of transposing the cache every step; XLA:CPU is 4-8x faster).
Each row b has written end_B[b] tokens (the sequence index of its next token); pos_BS[b, s] is the sequence
index slot s holds (-1: empty), so attention masks by cached *sequence indices*, never by slot. Layouts (as kernels_pallas.decode_attention):
  * contiguous (window=None): index i lives at slot i (S = the longest sequence);
  * ring with sink (S = sink + window): indices [0, sink) keep slots [0, sink) forever; index
    i >= sink lives at slot sink + (i - sink) % window, so the cache holds sink ∪ the last window.
A layer's keys / values are an array in the cache's dtype, or an `Int8Layer` (dtype int8: q [B, G, S, D] with
one f32 scale per slot and head [B, G, S], absmax / 127 over D, quantised as each token is written).
Feeding L tokens writes indices end_B + [0, L) (`write`, per row) and `advance` moves end_B by L.
While every row is at the same end (`aligned`, static), writes are one dynamic_update_slice and
attention evaluates one mask row for the batch; `truncate` clears it (a decoder that truncates inside a lax
loop starts from `init(...).replace(aligned=False)`, as a loop carry keeps its static fields). `truncate` rolls rows back; on a ring, indices evicted before the rollback do not come back, and the
Pallas decode kernel (which derives slot positions from end_B) is then exact only once the ring has
refilled: serve a truncated ring with impl='xla'.
"""
from __future__ import annotations

from typing import Optional

import flax
import jax
import jax.numpy as jnp

from arjax.nn import quant


@flax.struct.dataclass
class Int8Layer(quant.Int8):
  """One layer's int8 keys or values: q int8 [B, G, S, D] ~= values / scale, scale f32 [B, G, S], one per vector
  over D (kept without a trailing size-1 axis: with one, XLA:CPU copied every layer's scales at each decode step)."""

  def values(self):
    """The f32 values the layer holds [B, G, S, D]."""
    return self.q.astype(jnp.float32) * self.scale[..., None]


def quantize_layer(x) -> Int8Layer:
  """Values [..., D] -> Int8Layer (symmetric, one scale per vector over D)."""
  x8 = quant.symmetric(x, (-1,))
  return Int8Layer(q=x8.q, scale=x8.scale[..., 0])


@flax.struct.dataclass
class KVCache:
  k: tuple  # per layer [B, G, S, D]: an array, or an Int8Layer for an int8 cache
  v: tuple
  pos_BS: jax.Array  # int32 sequence index held by each slot; -1 = empty
  end_B: jax.Array  # int32 [B]: tokens written per row = sequence index of the next token
  window: Optional[int] = flax.struct.field(pytree_node=False, default=None)  # ring size; None = contiguous
  sink: int = flax.struct.field(pytree_node=False, default=0)  # ring: slots [0, sink) keep indices [0, sink)
  aligned: bool = flax.struct.field(pytree_node=False, default=True)  # every row at the same end_B (lockstep)

  @property
  def size(self) -> int:
    """Slots per layer (S)."""
    return self.pos_BS.shape[1]


def init(depth: int, batch: int, length: int, kv_heads: int, head_dim: int, dtype=jnp.float32, *,
         window: Optional[int] = None, sink: int = 0) -> KVCache:
  """An empty cache for sequences of up to `length` tokens; a ring (sink + window slots) if that is shorter."""
  if window is not None and (window <= 0 or sink < 0):
    raise ValueError(f"a ring cache needs window > 0 and sink >= 0, got window={window}, sink={sink}")
  if window is None and sink:
    raise ValueError(f"sink={sink} needs a ring cache (window=...)")
  if window is not None and sink + window >= length:
    window, sink = None, 0  # nothing would ever be evicted: contiguous is the same cache
  size = length if window is None else sink + window
  zeros = lambda: empty_layer((batch, kv_heads, size, head_dim), dtype)
  return KVCache(k=tuple(zeros() for _ in range(depth)), v=tuple(zeros() for _ in range(depth)),
                 pos_BS=jnp.full((batch, size), -1, jnp.int32), end_B=jnp.zeros((batch,), jnp.int32),
                 window=window, sink=sink)


def empty_layer(shape, dtype):
  """One layer's zero keys or values [B, G, S, D] in `dtype` (int8: an Int8Layer with unit scales)."""
  if jnp.dtype(dtype) == jnp.int8:
    return Int8Layer(q=jnp.zeros(shape, jnp.int8), scale=jnp.ones(shape[:-1], jnp.float32))
  return jnp.zeros(shape, dtype)


def astype(cache: KVCache, dtype) -> KVCache:
  """The cache with its layers held in `dtype` (float <-> float casts; to int8 by quantising each slot and head)."""
  def one(layer):
    if jnp.dtype(layer.dtype) == jnp.dtype(dtype):
      return layer
    values = layer.values() if isinstance(layer, Int8Layer) else layer
    return quantize_layer(values) if jnp.dtype(dtype) == jnp.int8 else values.astype(dtype)
  return cache.replace(k=tuple(one(a) for a in cache.k), v=tuple(one(a) for a in cache.v))


def slots(cache: KVCache, idx_BL):
  """Slot holding each sequence index (contiguous: the index; ring: sink + (i - sink) % window)."""
  if cache.window is None:
    return idx_BL
  return jnp.where(idx_BL < cache.sink, idx_BL, cache.sink + (idx_BL - cache.sink) % cache.window)


def query_indices(cache: KVCache, n: int):
  """Sequence indices int32 [B, n] of the next n tokens of every row."""
  return cache.end_B[:, None] + jnp.arange(n, dtype=jnp.int32)


def _check_len(cache: KVCache, n: int):
  if cache.window is not None and n > cache.window:
    raise ValueError(f"cannot write {n} tokens at once into a ring of window {cache.window}")


def write(cache: KVCache, layer_k, layer_v, k_BLGD, v_BLGD):
  """One layer's (k_all, v_all) [B, G, S, D] with L new keys/values [B, L, G, D] at indices end_B + [0, L), per
  row (a scatter; one dynamic_update_slice for an aligned contiguous cache, which XLA:CPU runs faster)."""
  _check_len(cache, k_BLGD.shape[1])
  if cache.aligned and cache.window is None:
    put = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(buf, jnp.swapaxes(new, 1, 2), cache.end_B[0], axis=2)
  else:
    slot_BL = slots(cache, query_indices(cache, k_BLGD.shape[1]))
    rows_B1 = jnp.arange(slot_BL.shape[0])[:, None]
    put = lambda buf, new: buf.at[rows_B1, :, slot_BL].set(new, mode="drop")  # new: [B, L, G, D]
  return _in_place(put, layer_k, k_BLGD), _in_place(put, layer_v, v_BLGD)


def _in_place(put, buf, new):
  """put(buf, new in buf's dtype); an Int8Layer gets the new tokens quantised (q and scale put alike). On CPU a
  16-bit float cache is written as its uint16 bit pattern: XLA:CPU runs a bf16 dynamic-update-slice or scatter
  in f32, converting the whole cache there and back at every write (VAR-d16: 0.7 ms a write, 0.2 s a sample;
  docs/inference_speed.md), while the bits are written in place."""
  if isinstance(buf, Int8Layer):
    new = quantize_layer(new)  # q [B, L, G, D], scale [B, L, G]: `put` writes either along the slot axis
    return Int8Layer(q=put(buf.q, new.q), scale=put(buf.scale, new.scale))
  new = new.astype(buf.dtype)
  if jax.default_backend() != "cpu" or buf.dtype.itemsize != 2:
    return put(buf, new)
  bits = jax.lax.bitcast_convert_type
  return bits(put(bits(buf, jnp.uint16), bits(new, jnp.uint16)), buf.dtype)


def written_pos(cache: KVCache, n: int):
  """pos_BS once the next n tokens are written (what attention over the written layers sees)."""
  _check_len(cache, n)
  idx_BL = query_indices(cache, n)
  return cache.pos_BS.at[jnp.arange(idx_BL.shape[0])[:, None], slots(cache, idx_BL)].set(idx_BL, mode="drop")


def advance(cache: KVCache, new_k, new_v, n: int) -> KVCache:
  """The cache with the written layers, n more indices held and end_B advanced by n."""
  return cache.replace(k=tuple(new_k), v=tuple(new_v), pos_BS=written_pos(cache, n), end_B=cache.end_B + n)


def resize(cache: KVCache, size: int) -> KVCache:
  """A contiguous cache with `size` slots: cut (the caller promises slots >= size are empty) or padded with
  empty slots. Attention reads every slot it is given, so a decoder that knows how far its rows can reach runs
  over a cut cache (`loop.run`, `Steps.fed_at_start`). A ring is returned as it is."""
  if cache.window is not None or size == cache.size:
    return cache
  if size < cache.size:
    cut = lambda a, axis: jax.lax.slice_in_dim(a, 0, size, axis=axis)
    return cache.replace(k=jax.tree.map(lambda a: cut(a, 2), cache.k), v=jax.tree.map(lambda a: cut(a, 2), cache.v),
                         pos_BS=cut(cache.pos_BS, 1))
  pad = lambda a, axis, value: jnp.pad(a, [(0, size - cache.size if i == axis else 0) for i in range(a.ndim)],
                                       constant_values=value)
  return cache.replace(k=jax.tree.map(lambda a: pad(a, 2, 0), cache.k),
                       v=jax.tree.map(lambda a: pad(a, 2, 0), cache.v), pos_BS=pad(cache.pos_BS, 1, -1))


def truncate(cache: KVCache, end_B) -> KVCache:
  """Per-row rollback: end = min(end, end_B); slots holding indices >= the new end become empty."""
  end_B = jnp.minimum(cache.end_B, jnp.asarray(end_B, jnp.int32))
  return cache.replace(pos_BS=jnp.where(cache.pos_BS >= end_B[:, None], -1, cache.pos_BS), end_B=end_B,
                       aligned=False)


def reset(cache: KVCache) -> KVCache:
  """All slots empty, every row at index 0 (buffers are kept; empty slots are never read)."""
  return truncate(cache, jnp.zeros_like(cache.end_B)).replace(aligned=True)
