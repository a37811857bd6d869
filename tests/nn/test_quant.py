"""arjax.nn.quant: bf16 and int8 kernels through layers.Dense / DenseGeneral against the f32 layer."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax import cache as cache_lib
from arjax.nn import layers
from arjax.nn import quant


class Proj(nn.Module):
  """Dense -> q/k/v-style DenseGeneral (heads, head_dim) -> o-style DenseGeneral over (heads, head_dim)."""

  @nn.compact
  def __call__(self, x):
    h = layers.Dense(64, name="fc")(x)
    q = layers.DenseGeneral((4, 16), name="q")(h)
    return layers.DenseGeneral(32, axis=(-2, -1), name="o")(q)


def _setup():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 32))
  params = Proj().init(jax.random.PRNGKey(1), x)["params"]
  return x, params


def test_int8_dense_within_rounding_bound():
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 48)) * jnp.linspace(0.1, 3.0, 48)
  w = jax.random.normal(jax.random.PRNGKey(1), (48, 40)) * jnp.linspace(0.01, 1.0, 40)
  y = np.asarray(x @ w, np.float64)
  y8 = np.asarray(layers.Dense(40, use_bias=False).apply({"params": {"kernel": quant.quantize_kernel(w)}}, x))
  xw, ww = np.asarray(x, np.float64), np.asarray(w, np.float64)
  w8 = np.asarray(quant.dequantize({"k": quant.quantize_kernel(w)})["k"], np.float64)
  bound = (np.abs(xw).sum(1, keepdims=True) * np.abs(ww).max(0, keepdims=True) / 254
           + np.abs(xw).max(1, keepdims=True) / 254 * np.abs(w8).sum(0, keepdims=True))
  err = np.abs(y - y8)
  assert np.all(err <= bound + 1e-4), (err / bound).max()
  assert err.max() > 0  # it is really quantised
  assert np.abs(y - y8).max() < 0.05 * np.abs(y).max()


def test_quantize_keeps_small_leaves_and_counts_bytes():
  x, params = _setup()
  q = quant.quantize(params, min_size=1000)  # fc (32x64) and q/o (64x64) kernels; biases stay (bf16)
  assert isinstance(q["fc"]["kernel"], quant.Int8) and q["fc"]["bias"].dtype == jnp.bfloat16
  assert q["q"]["kernel"].scale.shape == (1, 1, 16) and q["o"]["kernel"].scale.shape == (1, 1, 32)
  kernels = sum(params[n]["kernel"].size for n in ("fc", "q", "o"))
  biases = sum(params[n]["bias"].size for n in ("fc", "q", "o"))
  scales = 64 + 16 + 32
  assert quant.weight_bytes(params) == 4 * (kernels + biases)
  assert quant.weight_bytes(q) == kernels + 2 * biases + 4 * scales


def test_quantize_keeps_logit_heads_in_the_compute_dtype():
  """A Dense named `head` / `lm_head` (the logits) stays bf16; the same kernel under another name is int8. With
  int8_head every kernel is int8; without int8, int8_head changes nothing."""
  w = jax.random.normal(jax.random.PRNGKey(0), (64, 128))
  params = {"head": {"kernel": w}, "lm_head": {"kernel": w}, "block": {"head": {"kernel": w}, "up": {"kernel": w}}}
  q = quant.quantize(params)
  assert q["head"]["kernel"].dtype == jnp.bfloat16 and q["lm_head"]["kernel"].dtype == jnp.bfloat16
  assert q["block"]["head"]["kernel"].dtype == jnp.bfloat16 and isinstance(q["block"]["up"]["kernel"], quant.Int8)
  with_head = quant.for_inference(params, "bfloat16", True, int8_head=True)
  assert all(isinstance(k, quant.Int8) for k in jax.tree.leaves(with_head, is_leaf=lambda x: isinstance(x, quant.Int8)))
  np.testing.assert_array_equal(with_head["head"]["kernel"].q, quant.quantize_kernel(w).q)
  assert quant.for_inference(params, "bfloat16", False, int8_head=True)["head"]["kernel"].dtype == jnp.bfloat16


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_dense_general_paths_match_f32(mode):
  x, params = _setup()
  y = Proj().apply({"params": params}, x)
  p = quant.for_inference(params, "bfloat16", int8=mode == "int8")
  y2 = jax.jit(lambda p, x: Proj().apply({"params": p}, x))(p, x)
  assert y2.dtype == jnp.float32  # f32 accumulation and output
  rel = float(jnp.abs(y - y2).max() / jnp.abs(y).max())
  assert 1e-5 < rel < (0.02 if mode == "bf16" else 0.05), rel


def test_auto_compute_dtype_follows_the_host(monkeypatch):
  """'auto': bf16 on a CPU with AMX and on accelerators, f32 on other CPUs (bf16 products are slower there)."""
  from arjax import host
  for amx, want in ((True, jnp.bfloat16), (False, jnp.float32)):
    monkeypatch.setattr(host, "has_amx", lambda flags=None, amx=amx: amx)
    assert quant.dtype_of("auto") == want
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert quant.dtype_of("auto") == jnp.bfloat16
    monkeypatch.undo()
  assert quant.dtype_of("auto") == (jnp.bfloat16 if host.has_amx() else jnp.float32)


def test_errors_name_the_problem():
  with pytest.raises(ValueError, match="compute_dtype"):
    quant.dtype_of("float16x")
  bad = quant.Int8(q=jnp.ones((4, 3), jnp.int8), scale=jnp.ones((4, 3)))  # a scale along the contracted axis
  with pytest.raises(ValueError, match="contracted"):
    quant.dot_general(jnp.ones((2, 4)), bad, (((1,), (0,)), ((), ())))


def test_cache_dtype_option_reaches_the_sampler_cache():
  """`cache_dtype`: 'auto' is f32 on CPU (no fast bf16 matrix-vector product there), else the compute dtype;
  'compute' is the compute dtype everywhere; an explicit dtype wins; the sampler's loop allocates its KV cache in
  it, whatever the compute dtype."""
  from arjax.sampling import loop
  auto = quant.cache_dtype_of("auto", jnp.bfloat16)
  assert auto == (jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
  assert quant.cache_dtype_of("bfloat16", jnp.float32) == jnp.bfloat16
  assert quant.cache_dtype_of("compute", jnp.bfloat16) == jnp.bfloat16  # on CPU too
  assert quant.cache_dtype_of("compute", jnp.float32) == jnp.float32
  with pytest.raises(ValueError, match="cache_dtype"):
    quant.cache_dtype_of("int4", jnp.bfloat16)
  for name in ("float32", "bfloat16"):
    with quant.compute(jnp.bfloat16, quant.cache_dtype_of(name, jnp.bfloat16)):
      state = loop.init_state(None, None, {"k": jnp.zeros((2, 3))}, 2, jax.random.PRNGKey(0))
      assert quant.current() == jnp.bfloat16 and state.cache["k"].dtype == jnp.dtype(name)
  assert quant.current() is None and quant.current_cache() is None
  # int8: a KV cache's layers become Int8Layers; other float leaves of the cache pytree are left as they are
  with quant.compute(jnp.float32, quant.cache_dtype_of("int8", jnp.float32)):
    kv = cache_lib.init(depth=2, batch=2, length=4, kv_heads=1, head_dim=8)
    state = loop.init_state(None, None, {"kv": kv, "h": jnp.ones((2, 3))}, 2, jax.random.PRNGKey(0))
  assert all(isinstance(a, cache_lib.Int8Layer) for a in state.cache["kv"].k + state.cache["kv"].v)
  assert state.cache["h"].dtype == jnp.float32


@pytest.mark.parametrize("int8", [False, True])
def test_for_inference_is_idempotent(int8):
  """Prepared once, params pass through the sampler's own for_inference unchanged (int8 scales stay f32)."""
  _, params = _setup()
  once = quant.for_inference(params, "bfloat16", int8)
  twice = quant.for_inference(once, "bfloat16", int8)
  jax.tree.map(np.testing.assert_array_equal, once, twice)
  assert jax.tree.structure(once) == jax.tree.structure(twice)
  if int8:
    assert isinstance(twice["q"]["kernel"], quant.Int8) and twice["q"]["kernel"].scale.dtype == jnp.float32
