"""The bf16-weight Dense kernel (arjax/nn/cpu_bf16.cc) against float64 products of the bf16 operands and XLA's
bf16 form (quant.bf16_dot impl='xla')."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.nn import cpu_bf16, quant
from conftest import dense_layer_cases, needs_cpu_kernel, random_rows

DOT = (((1,), (0,)), ((), ()))
needs_kernel = needs_cpu_kernel("avx512f")


def _case(seed, m, k, n):
  """x [m, k] with per-row spreads 0.1-3, w [k, n] bf16."""
  x, w = random_rows(seed, m, k, n)
  return x, w.astype(jnp.bfloat16)


def _exact(x, w):
  """float64: x rounded to bf16 (as XLA converts) times the bf16 weights."""
  return np.asarray(jnp.asarray(x).astype(jnp.bfloat16), np.float64) @ np.asarray(w, np.float64)


@needs_kernel
@pytest.mark.parametrize("m,k,n", [(1, 64, 64), (4, 768, 2304), (7, 37, 70), (3, 5, 3), (13, 20, 130),
                                   (300, 130, 200), (513, 64, 96), (2, 1, 17)])
def test_matches_float64_and_xla(m, k, n):
  """Rows off the 6-row tile, any K, N off the 64-column panel and its 16-lane vectors, several 256-row blocks:
  equal to the float64 product of the bf16 operands to f32 summation error, and to XLA's bf16 form."""
  x, w = _case(m * 1000 + n, m, k, n)
  got = np.asarray(jax.jit(cpu_bf16.matmul)(x, w))
  want = _exact(x, w)
  tol = dict(rtol=1e-5, atol=1e-5 * np.abs(want).max())
  np.testing.assert_allclose(got, want, **tol)
  np.testing.assert_allclose(got, jax.jit(lambda x, w: quant.bf16_dot(x, w, DOT, impl="xla"))(x, w), **tol)


@needs_kernel
def test_rounding_of_the_activations_and_special_values():
  """Activations round to bf16 to nearest even (ties included) as XLA's convert does; NaN and inf propagate; an
  empty contraction gives zeros."""
  ties = np.asarray([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 3.0e38, 1 - 2 ** -9], np.float32)  # halfway cases
  x = jnp.asarray(np.stack([ties, np.float32([np.nan, 1, 1, 1, 1]), np.float32([np.inf, 0, 0, 0, 0])]))
  w = jnp.eye(5, dtype=jnp.bfloat16)
  got = np.asarray(cpu_bf16.matmul(x, w))
  np.testing.assert_array_equal(got[0], np.asarray(x[0].astype(jnp.bfloat16), np.float32))
  np.testing.assert_array_equal(got[1:], _exact(x[1:], w).astype(np.float32))  # NaN * 0 is NaN, inf * 1 inf
  assert np.isinf(got[2, 0]) and np.isnan(got[1:]).sum() == 9
  np.testing.assert_array_equal(cpu_bf16.matmul(jnp.ones((3, 0)), jnp.zeros((0, 5), jnp.bfloat16)), np.zeros((3, 5)))


@needs_kernel
def test_dense_layers_dispatch_to_the_kernel(monkeypatch):
  """bf16 Dense and DenseGeneral kernels: the jaxpr holds the kernel's target, and the result equals XLA's bf16
  form; impl='xla' and ARJAX_CPU_KERNELS=0 leave it to XLA; on an AMX CPU only few rows take it."""
  for apply, inputs, kernel, dn, bias in dense_layer_cases(lambda p: quant.cast(p, jnp.bfloat16)):
    assert "arjax_bf16_matmul" in str(jax.make_jaxpr(apply)(inputs))
    want = quant.bf16_dot(inputs, kernel, dn, impl="xla") + bias
    np.testing.assert_allclose(jax.jit(apply)(inputs), want, rtol=1e-5, atol=1e-5)
    assert "arjax_bf16_matmul" not in str(jax.make_jaxpr(lambda x: quant.bf16_dot(x, kernel, dn, impl="xla"))(inputs))
  monkeypatch.setattr(quant.cpu_bf16, "AMX_MAX_ROWS", 4)
  monkeypatch.setattr("arjax.host.has_amx", lambda flags=None: True)
  assert cpu_bf16.serves(4) and not cpu_bf16.serves(10)
  monkeypatch.setenv("ARJAX_CPU_KERNELS", "0")
  assert "arjax_bf16_matmul" not in str(jax.make_jaxpr(lambda x: apply(x))(inputs))  # a new trace


@needs_kernel
def test_gradients_are_the_xla_forms():
  """Training through bf16 params: the kernel's VJP is XLA's bf16 form's."""
  x, w = _case(7, 9, 40, 70)
  loss = lambda impl: lambda x, w: jnp.sum(jnp.sin(quant.bf16_dot(x, w, DOT, impl=impl)))
  assert "arjax_bf16_matmul" in str(jax.make_jaxpr(jax.grad(loss("auto"), (0, 1)))(x, w))
  got, want = jax.grad(loss("auto"), (0, 1))(x, w), jax.grad(loss("xla"), (0, 1))(x, w)
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-2, atol=1e-2)


def test_bad_inputs_name_the_problem():
  with pytest.raises(ValueError, match=r"x \[M, K\] and w \[K, N\]"):
    cpu_bf16.matmul(jnp.ones((2, 3)), jnp.ones((4, 5), jnp.bfloat16))
  with pytest.raises(ValueError, match="must be bfloat16"):
    cpu_bf16.matmul(jnp.ones((2, 3)), jnp.ones((3, 5)))
  with pytest.raises(ValueError, match="impl must be"):
    quant.bf16_dot(jnp.ones((2, 3)), jnp.ones((3, 5), jnp.bfloat16), DOT, impl="cpu")
