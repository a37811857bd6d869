"""decode_attention (interpret mode) vs. attention over the original sequence and the reference."""
import functools

import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import decode_attention as _decode
from kernels_pallas.reference import cache_positions, decode_attention_reference, masked_attention

# interpret mode on every backend (the default picks it on CPU only; on GPU the kernel refuses to run)
decode_attention = functools.partial(_decode, interpret=True)


def _write_cache(k_BND, lengths, size, window, sink):
  """Simulates token-by-token cache writes: position p goes to slot p, or the ring slot; [B, Hkv, S, D]."""
  cache = np.zeros((k_BND.shape[0], size) + k_BND.shape[2:], k_BND.dtype)
  for b, n in enumerate(lengths):
    for p in range(n):
      slot = p if window is None or p < sink else sink + (p - sink) % window
      cache[b, slot] = k_BND[b, p]
  return cache.swapaxes(1, 2)


def _visible_positions(lengths, n_max, lq, window, sink, causal):
  """[B, Lq, n_max]: sinks ∪ last `window` positions (or all), at most each query's own."""
  out = np.zeros((len(lengths), lq, n_max), bool)
  for b, n in enumerate(lengths):
    p = np.arange(n)
    held = np.ones(n, bool) if window is None else (p < sink) | (p >= n - window)
    for i in range(lq):
      out[b, i, :n] = held & (p <= (n - lq + i if causal else n - 1))
  return out


# window, sink, cache size, lengths (per row; ring rows wrap several times), Lq, causal, chunk
LAYOUTS = [
    (None, 0, 32, [5, 29, 13, 32], 1, True, 8),
    (None, 0, 30, [7, 30, 18, 3], 3, True, 8),
    (None, 0, 30, [7, 30, 18, 4], 4, False, 16),
    (10, 3, 13, [5, 29, 13, 41], 3, True, 8),
    (10, 3, 13, [4, 12, 30, 14], 2, False, 8),
    (6, 0, 6, [6, 9, 25, 2], 1, True, 4),
    (8, 2, 10, [3, 31, 10, 11], 4, True, 16),
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_decode_equals_attention_over_cached_positions(layout):
  window, sink, size, lengths, lq, causal, chunk = layout
  rng = np.random.default_rng(len(lengths) * size + lq)
  b, h, hk, d, n_max = len(lengths), 4, 2, 8, max(lengths)
  k_full = rng.normal(size=(b, n_max, hk, d)).astype(np.float32)
  v_full = rng.normal(size=(b, n_max, hk, d)).astype(np.float32)
  q = jnp.asarray(rng.normal(size=(b, lq, h, d)).astype(np.float32))
  k_cache = jnp.asarray(_write_cache(k_full, lengths, size, window, sink))
  v_cache = jnp.asarray(_write_cache(v_full, lengths, size, window, sink))
  n_B = jnp.asarray(lengths, jnp.int32)

  out = decode_attention(q, k_cache, v_cache, n_B, window=window, sink=sink, causal=causal,
                         block_k=chunk)
  visible = _visible_positions(lengths, n_max, lq, window, sink, causal)
  want = masked_attention(q, jnp.asarray(k_full), jnp.asarray(v_full),
                          jnp.asarray(visible)[:, None])
  np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)
  ref = decode_attention_reference(q, k_cache, v_cache, n_B, window=window, sink=sink,
                                   causal=causal)
  np.testing.assert_allclose(ref, want, atol=1e-5, rtol=1e-5)


def test_cache_positions_ring_after_wrap():
  pos = np.asarray(cache_positions(np.array([9, 2]), 6, window=4, sink=2))
  np.testing.assert_array_equal(pos, [[0, 1, 6, 7, 8, 5], [0, 1, -1, -1, -1, -1]])


def test_decode_bf16_and_default_chunk():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(2, 2, 2, 16)), jnp.bfloat16)
  k = jnp.asarray(rng.normal(size=(2, 1, 20, 16)), jnp.bfloat16)
  v = jnp.asarray(rng.normal(size=(2, 1, 20, 16)), jnp.bfloat16)
  n_B = jnp.array([20, 9], jnp.int32)
  out = decode_attention(q, k, v, n_B)
  assert out.dtype == jnp.bfloat16
  ref = decode_attention_reference(*(x.astype(jnp.float32) for x in (q, k, v)), n_B)
  np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=2e-2, rtol=2e-2)


def test_decode_rejects_bad_layouts():
  q, k = jnp.zeros((1, 3, 2, 8)), jnp.zeros((1, 1, 12, 8))
  n_B = jnp.array([5], jnp.int32)
  with pytest.raises(ValueError, match="window >= Lq"):
    decode_attention(q, k, k, n_B, window=2, sink=10)
  with pytest.raises(ValueError, match="sink \\+ window"):
    decode_attention(q, k, k, n_B, window=8, sink=2)
  with pytest.raises(ValueError, match="lengths"):
    decode_attention(q, k, k, jnp.array([5, 6], jnp.int32))
  with pytest.raises(ValueError, match="multiple of kv heads"):
    k2 = jnp.zeros((1, 2, 12, 8))
    decode_attention(jnp.zeros((1, 3, 3, 8)), k2, k2, n_B)
