"""The AVX512-VNNI int8 Dense kernel (arjax/nn/cpu_int8.cc) against exact integer sums and XLA's int8 dot."""
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.nn import cpu_int8, cpu_kernels, layers, quant

DOT = (((1,), (0,)), ((), ()))
needs_kernel = pytest.mark.skipif(
    jax.default_backend() != "cpu" or shutil.which(os.environ.get("CXX", "g++")) is None
    or "avx512_vnni" not in cpu_kernels.cpu_flags(), reason="a CPU kernel for AVX512-VNNI, built with a C++ compiler")


def _case(seed, m, k, n):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((m, k)).astype(np.float32) * rng.uniform(0.1, 3.0, (m, 1)).astype(np.float32)
  return jnp.asarray(x), quant.quantize_kernel(jnp.asarray(rng.standard_normal((k, n)), jnp.float32))


def _exact(x, w: quant.Int8):
  """The product in numpy: x quantised per row (x times 1 / scale, half to even), int64 sums, f32 rescale."""
  x = np.asarray(x)
  amax = np.abs(x).max(1, keepdims=True)
  scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
  q = np.clip(np.round(x * (np.float32(1) / scale)), -127, 127).astype(np.int64)
  acc = q @ np.asarray(w.q, np.int64)
  return acc.astype(np.float32) * scale * np.asarray(w.scale, np.float32)


@needs_kernel
@pytest.mark.parametrize("m,k,n", [(1, 64, 64), (4, 768, 2304), (7, 37, 70), (3, 5, 3), (11, 20, 130),
                                   (300, 130, 200), (513, 256, 128)])
def test_matches_exact_integer_sums_and_xla(m, k, n):
  """Rows off the 6-row tile (remainders 1-5), K off the 4-deep step, N off the 64-column panel, several 256-row
  blocks: the int32 sums are exact (the outputs equal numpy's int64 product to f32 rounding of the rescale), and
  equal XLA's int8 form (quant.int8_dot impl='xla')."""
  x, w = _case(m * 1000 + n, m, k, n)
  got = np.asarray(jax.jit(lambda x, w: quant.int8_dot(x, w, DOT, impl="cpu"))(x, w))
  xla = np.asarray(jax.jit(lambda x, w: quant.int8_dot(x, w, DOT, impl="xla"))(x, w))
  np.testing.assert_allclose(got, _exact(x, w), rtol=1e-6, atol=1e-6 * np.abs(got).max())
  np.testing.assert_allclose(got, xla, rtol=1e-6, atol=1e-6 * np.abs(got).max())


@needs_kernel
def test_zero_rows_and_extreme_weights():
  """An all-zero activation row gives zeros (scale 1); weights of -127 / 127 everywhere and activations at the
  row's max (u8 255 after the +128 shift) sum without overflow."""
  x = jnp.ones((3, 1024), jnp.float32).at[1].set(0.0).at[2].set(-2.0)
  w = quant.Int8(q=jnp.full((1024, 96), 127, jnp.int8).at[:, 1::2].set(-127), scale=jnp.full((1, 96), 0.5))
  got = np.asarray(cpu_int8.matmul(x, w.q, w.scale[0]))
  np.testing.assert_array_equal(got[1], 0)
  np.testing.assert_allclose(got, _exact(x, w), rtol=1e-6)
  assert got[0, 0] == pytest.approx(1024 * 127 * 0.5 * (1 / 127) * 127, rel=1e-6)


@needs_kernel
def test_dense_layers_dispatch_to_the_kernel(monkeypatch):
  """Dense (one contracted axis) and an output projection contracting (heads, head_dim): the jaxpr holds the
  kernel's target under impl 'auto', and the result equals XLA's int8 form; with ARJAX_CPU_KERNELS=0 XLA
  serves."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4, 16))
  for module, inputs in [(layers.Dense(48), x.reshape(2, 5, 64)), (layers.DenseGeneral(32, axis=(-2, -1)), x)]:
    params = quant.quantize(nn.meta.unbox(module.init(jax.random.PRNGKey(1), inputs)), min_size=0)
    apply = lambda x: module.apply(params, x)
    assert "arjax_int8_matmul" in str(jax.make_jaxpr(apply)(inputs))
    kernel = params["params"]["kernel"]
    dn = ((tuple(range(inputs.ndim - kernel.ndim + 1, inputs.ndim)), tuple(range(kernel.ndim - 1))), ((), ()))
    want = quant.int8_dot(inputs, kernel, dn, impl="xla") + params["params"]["bias"]
    np.testing.assert_allclose(jax.jit(apply)(inputs), want, rtol=1e-5, atol=1e-5)
  monkeypatch.setenv("ARJAX_CPU_KERNELS", "0")
  assert "arjax_int8_matmul" not in str(jax.make_jaxpr(lambda x: module.apply(params, x))(inputs))


def test_bad_inputs_name_the_problem():
  w = quant.quantize_kernel(jnp.ones((8, 4)))
  with pytest.raises(ValueError, match=r"x \[M, K\]"):
    cpu_int8.matmul(jnp.ones((2, 7)), w.q, w.scale[0])
  with pytest.raises(ValueError, match="must be int8"):
    cpu_int8.matmul(jnp.ones((2, 8)), w.q.astype(jnp.int32), w.scale[0])
  with pytest.raises(ValueError, match="trailing"):
    quant.int8_dot(jnp.ones((8, 2)), w, (((0,), (0,)), ((), ())), impl="cpu")
  with pytest.raises(ValueError, match="impl"):
    quant.int8_dot(jnp.ones((2, 8)), w, DOT, impl="fast")
