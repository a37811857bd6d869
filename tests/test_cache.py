"""Cache v2: per-row end_B / pos_BS, ring + sink, scatter writes, truncate rollback; the Transformer over it
(xla and Pallas interpret) equals the uncached pass under the corresponding mask."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels_pallas
from arjax import cache as cache_lib
from arjax import masks
from arjax.nn.transformer import Transformer, TransformerConfig

B, N, D = 3, 12, 32
KW = dict(width=D, depth=2, heads=4, kv_heads=2, qk_norm="rms")


@pytest.fixture(scope="module")
def setup():
  x = jax.random.normal(jax.random.PRNGKey(0), (B, N, D))
  params = nn.meta.unbox(Transformer(TransformerConfig(**KW, impl="xla")).init(jax.random.PRNGKey(1), x,
                                                                               masks.causal()))
  return params, x


def model(impl):
  return Transformer(TransformerConfig(**KW, impl=impl))


def full(params, x_BLD, mask):
  return jax.jit(lambda p, x: model("xla").apply(p, x, mask))(params, x_BLD)[0]


def stepper(impl, mask, whole_unit=False, static_end=None):
  return jax.jit(lambda p, x, c: model(impl).apply(p, x, mask, cache=c, whole_unit=whole_unit,
                                                   static_end=static_end))


def decode(params, x_BLD, cache, impl, mask, chunks):
  """Feeds x_BLD in chunks [(a, b)] (per-row indices continue from each row's end_B)."""
  step, outs = stepper(impl, mask), []
  for a, b in chunks:
    h, cache = step(params, x_BLD[:, a:b], cache)
    outs.append(h)
  return jnp.concatenate(outs, 1), cache


def concat_rows(*caches):
  """One cache whose rows are the given caches' (rows at different ends: not aligned)."""
  return jax.tree.map(lambda *xs: jnp.concatenate(xs), *caches).replace(aligned=False)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_token_by_token_equals_full_causal_pass(setup, impl):
  params, x = setup
  chunks = [(0, 3)] + [(i, i + 1) for i in range(3, N)]
  got, cache = decode(params, x, model(impl).init_cache(B, N), impl, masks.causal(), chunks)
  np.testing.assert_allclose(got, full(params, x, masks.causal()), atol=2e-5)
  np.testing.assert_array_equal(cache.end_B, [N] * B)
  np.testing.assert_array_equal(cache.pos_BS, np.tile(np.arange(N), (B, 1)))
  assert cache.aligned  # lockstep rows: one dynamic_update_slice per write, one mask row
  # the per-row (scatter) path gives the same result on the same aligned rows
  unaligned, _ = decode(params, x, model(impl).init_cache(B, N).replace(aligned=False), impl, masks.causal(), chunks)
  np.testing.assert_allclose(unaligned, got, atol=1e-6)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_rows_at_different_ends(setup, impl):
  """Rows prefilled to 5, 2, 7 tokens decode jointly; each equals its own uncached pass (positions default
  to per-row sequence indices)."""
  params, x = setup
  ends, steps = (5, 2, 7), 4
  tcfg = TransformerConfig(**KW, impl=impl)
  prefill = lambda b, n: stepper(impl, masks.causal())(params, x[b:b + 1, :n], tcfg.init_cache(1, N))
  cache = concat_rows(*[prefill(b, n)[1] for b, n in enumerate(ends)])
  np.testing.assert_array_equal(cache.end_B, ends)
  feed = jnp.stack([x[b, n:n + steps] for b, n in enumerate(ends)])
  got, cache = decode(params, feed, cache, impl, masks.causal(), [(i, i + 1) for i in range(steps)])
  for b, n in enumerate(ends):
    ref = full(params, x[b:b + 1, :n + steps], masks.causal())[0, n:]
    np.testing.assert_allclose(got[b], ref, atol=2e-5)
  np.testing.assert_array_equal(cache.end_B, np.asarray(ends) + steps)


def test_slots_write_advance_layout():
  """Ring + sink slots as decode_attention's layout; pos_BS == kernels_pallas.cache_positions."""
  cache = cache_lib.init(1, 2, 20, 1, 4, window=4, sink=2)
  assert (cache.window, cache.sink, cache.size) == (4, 2, 6)
  np.testing.assert_array_equal(cache_lib.slots(cache, jnp.arange(9)[None]), [[0, 1, 2, 3, 4, 5, 2, 3, 4]])
  for n in (3, 1, 1, 4, 2):
    new = jnp.broadcast_to(cache_lib.query_indices(cache, n)[..., None, None].astype(jnp.float32), (2, n, 1, 4))
    k, v = cache_lib.write(cache, cache.k[0], cache.v[0], new, -new)
    cache = cache_lib.advance(cache, [k], [v], n)
    want = kernels_pallas.cache_positions(cache.end_B, cache.size, cache.window, cache.sink)
    np.testing.assert_array_equal(cache.pos_BS, want)
    held = np.asarray(cache.pos_BS)
    np.testing.assert_array_equal(np.asarray(cache.k[0])[:, 0, :, 0][held >= 0], held[held >= 0])  # slot holds its index
  assert set(held[0]) == {0, 1} | set(range(11 - 4, 11))  # sink ∪ the last window
  with pytest.raises(ValueError, match="ring of window 4"):
    cache_lib.write(cache, cache.k[0], cache.v[0], jnp.zeros((2, 5, 1, 4)), jnp.zeros((2, 5, 1, 4)))
  assert cache_lib.init(1, 2, 6, 1, 4, window=4, sink=2).window is None  # nothing to evict: contiguous
  empty = cache_lib.reset(cache)
  assert int(empty.end_B.max()) == 0 and int(empty.pos_BS.max()) == -1


@pytest.mark.parametrize("aligned,window", [(True, None), (False, None), (True, 4)])
def test_bf16_write_is_the_rounded_f32_write_in_place(aligned, window):
  """A bf16 cache write (dynamic_update_slice: aligned contiguous; scatter: per-row ends or a ring) holds the
  bf16-rounded values of the f32 write, and compiles without an f32 copy of the cache (XLA:CPU would run a bf16
  update in f32: the whole cache converted there and back at every write)."""
  shape = (2, 3, 3, 4)  # [B, L, G, D] new keys
  caches = {dt: cache_lib.init(1, 2, 16, 3, 4, dt, window=window).replace(aligned=aligned) for dt in (jnp.float32,
                                                                                                       jnp.bfloat16)}
  for dt, c in caches.items():
    caches[dt] = c.replace(k=(jax.random.normal(jax.random.PRNGKey(0), c.k[0].shape).astype(dt),),
                           end_B=jnp.array([3, 3]) if aligned else jnp.array([3, 6]))
  new = jax.random.normal(jax.random.PRNGKey(1), shape)
  write = jax.jit(lambda c, n: cache_lib.write(c, c.k[0], c.v[0], n, -n))
  want_k, want_v = write(caches[jnp.float32], new)
  got_k, got_v = write(caches[jnp.bfloat16], new)
  assert got_k.dtype == jnp.bfloat16
  np.testing.assert_array_equal(got_k, want_k.astype(jnp.bfloat16))
  np.testing.assert_array_equal(got_v, want_v.astype(jnp.bfloat16))
  size = caches[jnp.bfloat16].size
  hlo = write.lower(caches[jnp.bfloat16], new).compile().as_text()
  assert f"f32[2,3,{size},4]" not in hlo, "the bf16 cache is converted to f32 for the write"


@pytest.mark.parametrize("impl,mask", [("xla", masks.window_sink(1, 4, 2)), ("xla", masks.causal()),
                                       ("pallas", masks.causal())])
def test_ring_sink_decode_equals_window_sink_dense(setup, impl, mask):
  """A ring (window 4, sink 2) decoded token by token (a first chunk that evicts nothing) equals the full pass
  under window_sink(block=1, 4, 2): with the causal mask the ring's contents do the windowing (Pallas:
  decode_attention's ring layout)."""
  params, x = setup
  cache = model(impl).init_cache(B, N, window=4, sink=2)
  chunks = [(0, 4)] + [(i, i + 1) for i in range(4, N)]
  got, cache = decode(params, x, cache, impl, mask, chunks)
  np.testing.assert_allclose(got, full(params, x, masks.window_sink(1, 4, 2)), atol=2e-5)
  assert float(jnp.abs(got - full(params, x, masks.causal())).max()) > 1e-3  # the eviction matters
  assert all(set(np.asarray(row)) == {0, 1, N - 4, N - 3, N - 2, N - 1} for row in cache.pos_BS)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_truncate_rollback_equals_fresh_decode(setup, impl):
  """Decode 8 tokens, roll rows back to 8 / 3 / 5, decode 3 other tokens: equals a fresh decode of the same."""
  params, x = setup
  y = jax.random.normal(jax.random.PRNGKey(5), (B, 3, D))
  _, cache = decode(params, x, model(impl).init_cache(B, N), impl, masks.causal(),
                    [(0, 2)] + [(i, i + 1) for i in range(2, 8)])
  keep = (8, 3, 5)
  cache = cache_lib.truncate(cache, jnp.asarray(keep))
  np.testing.assert_array_equal(cache.end_B, keep)
  assert all(np.asarray(row).max() == m - 1 for row, m in zip(cache.pos_BS, keep))
  got, _ = decode(params, y, cache, impl, masks.causal(), [(i, i + 1) for i in range(3)])
  for b, m in enumerate(keep):
    ref = full(params, jnp.concatenate([x[b:b + 1, :m], y[b:b + 1]], 1), masks.causal())[0, m:]
    np.testing.assert_allclose(got[b], ref, atol=2e-5)


def test_whole_unit_pallas_decode_equals_xla(setup):
  """Block-causal units fed whole (whole_unit=True): Pallas decode_attention(causal=False) == XLA == full pass,
  also with static_end (only the written prefix read, no mask) on both."""
  params, x = setup
  spec = masks.block_causal((1, 4, 7))
  outs = {}
  for impl, prefix in (("xla", False), ("pallas", False), ("xla", True), ("pallas", True)):
    cache, got = model(impl).init_cache(B, N), []
    for a, b in [(0, 1), (1, 5), (5, 12)]:
      h, cache = stepper(impl, spec, whole_unit=True, static_end=b if prefix else None)(params, x[:, a:b], cache)
      got.append(h)
    outs[impl, prefix] = jnp.concatenate(got, 1)
  want = full(params, x, spec)
  for got in outs.values():
    np.testing.assert_allclose(got, want, atol=2e-5)
  with pytest.raises(ValueError, match="static_end"):
    stepper("xla", spec, whole_unit=True, static_end=1)(params, x[:, :1], model("xla").init_cache(B, N, window=4))


def test_transformer_config_validates():
  with pytest.raises(ValueError, match=r"'depht'.*config\.model\.decoder"):
    TransformerConfig.make(dict(depht=2, heads=2), "model.decoder", width=8)
  tcfg = TransformerConfig.make(dict(depth=2, heads=4, kv_heads=2, pos="learned"), width=32, max_len=7)
  assert (tcfg.head_dim, tcfg.num_kv_heads, tcfg.max_len) == (8, 2, 7)
  for bad in (dict(pos="rope4d"), dict(qk_norm="l3"), dict(heads=3), dict(kv_heads=3)):
    with pytest.raises(ValueError):
      TransformerConfig.make({**dict(depth=1, heads=4), **bad}, width=32)
  cache = Transformer(tcfg).init_cache(2, 7)  # callable on an unbound module
  assert cache.k[0].shape == (2, 2, 7, 8) and len(cache.k) == 2  # [B, G, S, D]


def test_resize_cuts_and_pads_contiguous_caches_only():
  """resize to fewer slots keeps the first ones; back to more pads empty slots (zeros, pos -1); a ring is kept."""
  cache = cache_lib.init(2, 3, 8, 2, 4)
  k = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 2, 4))
  new_k, new_v = zip(*[cache_lib.write(cache, cache.k[i], cache.v[i], k, 2 * k) for i in range(2)])
  cache = cache_lib.advance(cache, new_k, new_v, 5)
  cut = cache_lib.resize(cache, 5)
  assert cut.size == 5 and cut.k[1].shape == (3, 2, 5, 4)
  np.testing.assert_array_equal(cut.v[0], cache.v[0][:, :, :5])
  back = cache_lib.resize(cut, 8)
  jax.tree.map(np.testing.assert_array_equal, back, cache)  # the cut slots were empty: nothing lost
  ring = cache_lib.init(1, 1, 64, 1, 4, window=4, sink=1)
  assert cache_lib.resize(ring, 2) is ring
