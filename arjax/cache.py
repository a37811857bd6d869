"""Explicit KV cache pytrees: the caller owns the cache; prefill and extend are the same call.

A cache holds, per layer, keys and values [B, S, Hkv, D] for S slots, and `index`, the number of
positions already written (shared by the batch). Feeding L new tokens writes slots
[index, index + L) and advances index by L.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
  k: tuple  # per layer [B, S, Hkv, D]
  v: tuple
  index: jax.Array  # int32 scalar

  @property
  def max_len(self) -> int:
    return self.k[0].shape[1]


def init(depth: int, batch: int, max_len: int, kv_heads: int, head_dim: int,
         dtype=jnp.float32) -> KVCache:
  """An empty cache of `max_len` slots per layer."""
  zeros = lambda: jnp.zeros((batch, max_len, kv_heads, head_dim), dtype)
  return KVCache(k=tuple(zeros() for _ in range(depth)), v=tuple(zeros() for _ in range(depth)),
                 index=jnp.zeros((), jnp.int32))


def write(k_cache_BSGD, v_cache_BSGD, k_BLGD, v_BLGD, index):
  """Writes L new keys/values at slot `index` (no bounds growth: the caller sizes the cache)."""
  k_cache_BSGD = jax.lax.dynamic_update_slice_in_dim(k_cache_BSGD, k_BLGD.astype(k_cache_BSGD.dtype),
                                                     index, axis=1)
  v_cache_BSGD = jax.lax.dynamic_update_slice_in_dim(v_cache_BSGD, v_BLGD.astype(v_cache_BSGD.dtype),
                                                     index, axis=1)
  return k_cache_BSGD, v_cache_BSGD


def advance(cache: KVCache, new_k, new_v, n_new: int) -> KVCache:
  """Returns the cache with updated layers and index advanced by n_new."""
  return KVCache(k=tuple(new_k), v=tuple(new_v), index=cache.index + n_new)
