"""The CPU decode-attention kernel (arjax/nn/cpu_attention.cc) against the jnp reference `xla_attention`."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax import cache as cache_lib
from arjax import masks
from arjax.nn import attention, cpu_attention, cpu_kernels
from arjax.nn.transformer import Transformer, TransformerConfig
from conftest import needs_cpu_kernel

needs_kernel = needs_cpu_kernel()


def _case(seed, b, q, h, g, s, d, written):
  """Random q [b, q, h, d], k / v [b, g, s, d] and slots holding indices: a permutation of [0, written) (ring-
  like order) with the rest empty (-1), per row."""
  rng = np.random.default_rng(seed)
  q_BQHD, k, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in
                  ((b, q, h, d), (b, g, s, d), (b, g, s, d)))
  pos_BS = np.full((b, s), -1, np.int32)
  for row in range(b):
    pos_BS[row, rng.choice(s, written, replace=False)] = rng.permutation(written)
  return q_BQHD, k, v, jnp.asarray(pos_BS)


def _layers(k, v, dtype):
  """k, v in a cache of `dtype` and the f32 values that cache holds (the reference's input)."""
  c = cache_lib.astype(cache_lib.KVCache(k=(k,), v=(v,), pos_BS=jnp.zeros((1, 1)), end_B=jnp.zeros(1)), dtype)
  held = lambda a: a.values() if isinstance(a, cache_lib.Int8Layer) else a.astype(jnp.float32)
  return c.k[0], c.v[0], held(c.k[0]), held(c.v[0])


@needs_kernel
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.int8])
@pytest.mark.parametrize("b,q,h,g,s,d", [(2, 1, 4, 4, 50, 64), (3, 2, 6, 2, 33, 40), (1, 3, 2, 1, 20, 128)])
def test_causal_matches_reference(dtype, b, q, h, g, s, d):
  """Causal queries at per-row indices over slots in any order, MHA and GQA, head dims 64 / 128 (unrolled) and
  40 (generic): equal to xla_attention over the values the cache holds."""
  q_BQHD, k, v, pos_BS = _case(0, b, q, h, g, s, d, written=s - 7)
  q_idx_BQ = jnp.asarray(np.random.default_rng(1).integers(q - 1, s - 7, (b, 1)) + np.arange(q) - (q - 1),
                         jnp.int32)
  k_c, v_c, k_ref, v_ref = _layers(k, v, dtype)
  assert attention._cpu_serves(masks.causal(), False, q_BQHD, k_c, v_c)
  got = jax.jit(lambda *a: attention.cached_attention(*a, masks.causal(), q_idx_BQ, pos_BS))(q_BQHD, k_c, v_c)
  want = attention.xla_attention(q_BQHD, k_ref, v_ref, masks.causal(), q_idx_BQ=q_idx_BQ, k_idx_BK=pos_BS)
  np.testing.assert_allclose(got, want, atol=2e-6 * float(jnp.abs(want).max()), rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.int8])
@pytest.mark.parametrize("b,q,h,g,s,d,whole", [(2, 20, 4, 4, 70, 64, False), (1, 9, 8, 2, 130, 128, False),
                                               (2, 35, 2, 2, 48, 64, True), (1, 17, 1, 1, 17, 64, False)])
def test_many_rows_match_reference(dtype, b, q, h, g, s, d, whole):
  """More than MAX_ROWS query rows per kv head (VAR's scales) take the many-row path over f32, bf16 and int8 caches:
  rows off its 6-row tile, slots off 16 and 64, head dims 64 and 128, GQA, causal (with empty slots) and whole units
  (a filled cache); equal to xla_attention over the values the cache holds."""
  q_BQHD, k, v, pos_BS = _case(5, b, q, h, g, s, d, written=s if whole else s - 5)  # a whole unit: every slot
  k_c, v_c, k_ref, v_ref = _layers(k, v, dtype)
  assert cpu_attention.many_rows(dtype, q * h // g, d) == ("avx512f" in cpu_kernels.cpu_flags())
  q_idx_BQ = jnp.asarray(np.arange(q)[None] + np.asarray([[s - 5 - q], [max(s - 30, 0)]])[:b], jnp.int32)
  mask = masks.block_causal((q,)) if whole else masks.causal()
  call = lambda *a: attention.cached_attention(*a, mask, q_idx_BQ, pos_BS, whole_unit=whole)
  target = cpu_attention.TARGETS[jnp.dtype(dtype)][0]
  assert (target in str(jax.make_jaxpr(call)(q_BQHD, k_c, v_c))) == cpu_attention.many_rows(dtype, q * h // g, d)
  want = attention.xla_attention(q_BQHD, k_ref, v_ref, None if whole else mask, q_idx_BQ=q_idx_BQ, k_idx_BK=pos_BS)
  np.testing.assert_allclose(jax.jit(call)(q_BQHD, k_c, v_c), want, atol=2e-6 * float(jnp.abs(want).max()),
                             rtol=1e-5)


@needs_kernel
def test_whole_unit_sees_every_written_slot_and_empty_rows_are_zeros():
  """whole_unit over a filled cache: every slot, whatever the queries' indices (mask=None in the reference); a
  row with no written slot gives zeros, as xla_attention does; the batch-1 pos of an aligned cache broadcasts."""
  q_BQHD, k, v, pos_BS = _case(2, 2, 4, 4, 2, 24, 64, written=24)
  got = attention.cached_attention(q_BQHD, k, v, masks.block_causal((2, 4)), jnp.zeros((2, 4), jnp.int32), pos_BS,
                                   whole_unit=True, filled=True)
  want = attention.xla_attention(q_BQHD, k, v, None, k_idx_BK=pos_BS)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)
  empty = jnp.full((1, 24), -1, jnp.int32)
  out = cpu_attention.decode_attention(jnp.ones((2, 2, 8, 64)), k, v, empty, jnp.full((1, 8), 100, jnp.int32))
  np.testing.assert_array_equal(out, 0)


@needs_kernel
def test_gradients_are_the_references():
  """The kernel's custom VJP is xla_attention's (LongLive's long tuning trains through cached attention)."""
  q_BQHD, k, v, pos_BS = _case(3, 2, 2, 4, 2, 16, 64, written=16)
  q_idx_BQ = jnp.asarray([[9, 10], [14, 15]], jnp.int32)
  loss = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(attention.cached_attention(
      q, k, v, masks.causal(), q_idx_BQ, pos_BS, impl=impl)))
  got, want = jax.grad(loss("auto"), (0, 1, 2))(q_BQHD, k, v), jax.grad(loss("xla"), (0, 1, 2))(q_BQHD, k, v)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@needs_kernel
def test_dispatch():
  """auto takes the kernel only for causal / whole-unit calls with <= MAX_ROWS query rows per kv head, or more with
  a head dim that is a multiple of 64 (the many-row path); impl='xla' never; an int8 cache elsewhere is dequantised
  by XLA, and Pallas refuses it."""
  q_BQHD, k, v, pos_BS = _case(4, 1, 1, 2, 2, 8, 64, written=8)
  called = lambda fn: "arjax_decode_attention" in str(jax.make_jaxpr(fn)(q_BQHD))
  idx = jnp.full((1, 1), 7, jnp.int32)
  assert called(lambda q: attention.cached_attention(q, k, v, masks.causal(), idx, pos_BS))
  assert not called(lambda q: attention.cached_attention(q, k, v, masks.causal(), idx, pos_BS, impl="xla"))
  assert not called(lambda q: attention.cached_attention(q, k, v, masks.block_causal((4, 4)), idx, pos_BS))
  rows = lambda n: jnp.zeros((1, n, 2, 64))  # n queries x 2 heads over 2 kv heads: n rows per kv head
  assert attention._cpu_serves(masks.causal(), False, rows(cpu_attention.MAX_ROWS), k, v)
  many = "avx512f" in cpu_kernels.cpu_flags()
  assert attention._cpu_serves(masks.causal(), False, rows(cpu_attention.MAX_ROWS + 1), k, v) == many
  bf16 = k.astype(jnp.bfloat16), v.astype(jnp.bfloat16)
  assert attention._cpu_serves(masks.causal(), False, rows(cpu_attention.MAX_ROWS + 1), *bf16) == many
  assert not attention._cpu_serves(masks.causal(), False, rows(cpu_attention.MAX_ROWS + 1)[..., :40], k[..., :40],
                                   v[..., :40])
  int8 = cache_lib.quantize_layer(k)
  with pytest.raises(ValueError, match="int8 KV cache"):
    attention.cached_attention(q_BQHD, int8, int8, masks.causal(), idx, pos_BS, impl="pallas")


def test_int8_cache_writes_quantise_each_slot_and_head():
  """An int8 cache holds q int8 and one scale per (row, head, slot); a written token comes back within half a
  quantisation step of its values; unwritten slots stay empty; resize cuts q and scale alike."""
  c = cache_lib.init(depth=1, batch=2, length=8, kv_heads=3, head_dim=16, dtype=jnp.int8)
  assert isinstance(c.k[0], cache_lib.Int8Layer) and c.k[0].q.dtype == jnp.int8 and c.k[0].scale.shape == (2, 3, 8)
  new = jax.random.normal(jax.random.PRNGKey(0), (2, 2, 3, 16))  # [B, L, G, D]
  k_layer, _ = cache_lib.write(c, c.k[0], c.v[0], new, new)
  held = k_layer.values()[:, :, :2]  # [B, G, 2, D]
  step = jnp.abs(new).max(-1) / 127  # [B, L, G]
  err = jnp.abs(held - jnp.swapaxes(new, 1, 2)).max(-1)  # [B, G, L]
  assert bool(jnp.all(err <= jnp.swapaxes(step, 1, 2) / 2 + 1e-7))
  np.testing.assert_array_equal(k_layer.q[:, :, 2:], 0)
  cut = cache_lib.resize(c.replace(k=(k_layer,)), 4)
  assert cut.k[0].q.shape == (2, 3, 4, 16) and cut.k[0].scale.shape == (2, 3, 4)


def test_bad_inputs_and_a_missing_compiler_name_the_problem(tmp_path, monkeypatch):
  k = jnp.zeros((1, 1, 4, 64), jnp.int8)
  with pytest.raises(ValueError, match="scale"):
    cpu_attention.decode_attention(jnp.zeros((1, 1, 1, 64)), k, k, jnp.zeros((1, 4), jnp.int32),
                                   jnp.zeros((1, 1), jnp.int32))
  with pytest.raises(ValueError, match="f32, bf16 or int8"):
    cpu_attention.decode_attention(jnp.zeros((1, 1, 1, 64)), k.astype(jnp.float16), k.astype(jnp.float16),
                                   jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 1), jnp.int32))
  monkeypatch.setenv("CXX", "no-such-compiler")
  monkeypatch.setenv("ARJAX_KERNEL_CACHE", str(tmp_path))
  with pytest.raises(RuntimeError, match="no-such-compiler"):
    cpu_kernels.build(cpu_attention.SOURCE)


@needs_kernel
@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 1e-5), (jnp.int8, 0.05)])
def test_transformer_decoding_through_the_kernel_matches_the_full_forward(dtype, atol):
  """Token-by-token decoding (impl='auto': the kernel on CPU) equals the uncached causal forward: to f32 rounding
  with an f32 cache, within int8 rounding (max 0.05 on outputs of max ~3) with an int8 one."""
  model = Transformer(TransformerConfig(width=64, depth=2, heads=4, kv_heads=2, pos="rope1d", max_len=16))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 64))
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(1), x, masks.causal()))
  full, _ = model.apply(params, x, masks.causal())
  cache = model.init_cache(2, 16, dtype)
  step = jax.jit(lambda x, cache: model.apply(params, x, masks.causal(), cache=cache))
  outs = []
  for i in range(12):
    h, cache = step(x[:, i:i + 1], cache)
    outs.append(h)
  assert "arjax_decode_attention" in str(jax.make_jaxpr(step)(x[:, :1], cache))
  np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=atol, rtol=0)
