"""The AVX512-VNNI int8 kernels (arjax/nn/cpu_int8.cc) - Dense products and 3x3 convolutions - against exact
integer sums and their XLA forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.nn import cpu_int8, quant
from conftest import dense_layer_cases, needs_cpu_kernel, random_rows

DOT = (((1,), (0,)), ((), ()))
needs_kernel = needs_cpu_kernel("avx512_vnni")


def _case(seed, m, k, n):
  """x [m, k] with per-row spreads 0.1-3, w [k, n] int8."""
  x, w = random_rows(seed, m, k, n)
  return x, quant.quantize_kernel(w)


def _quantize_rows(x):
  """numpy: x quantised over its last axis (x times 1 / scale, half to even) -> (int64 q, f32 scale [..., 1])."""
  x = np.asarray(x)
  amax = np.abs(x).max(-1, keepdims=True)
  scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
  return np.clip(np.round(x * (np.float32(1) / scale)), -127, 127).astype(np.int64), scale


def _exact(x, w: quant.Int8):
  """The product in numpy: x quantised per row, int64 sums, f32 rescale."""
  q, scale = _quantize_rows(x)
  acc = q @ np.asarray(w.q, np.int64)
  return acc.astype(np.float32) * scale * np.asarray(w.scale, np.float32)


@needs_kernel
@pytest.mark.parametrize("m,k,n", [(1, 64, 64), (4, 768, 2304), (7, 37, 70), (3, 5, 3), (11, 20, 130),
                                   (300, 130, 200), (513, 256, 128), (9, 44, 160), (5, 30, 96)])
def test_matches_exact_integer_sums_and_xla(m, k, n):
  """Rows off the 6-row tile (remainders 1-5), K off the 4-deep step, N off the 64-column panel (last panels of
  at most 32 columns take the 2-vector tile: 3, 6, 8, and exactly 32 columns), several 256-row blocks: the int32
  sums are exact (the outputs equal numpy's int64 product to f32 rounding of the rescale), and
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
  empty = quant.Int8(q=jnp.zeros((0, 5), jnp.int8), scale=jnp.ones((1, 5)))  # an empty contraction sums to 0
  np.testing.assert_array_equal(cpu_int8.matmul(jnp.ones((3, 0)), empty.q, empty.scale[0]), np.zeros((3, 5)))
  np.testing.assert_array_equal(cpu_int8.conv3x3(jnp.ones((1, 2, 2, 0)), jnp.zeros((3, 3, 0, 5), jnp.int8),
                                                 jnp.ones(5)), np.zeros((1, 2, 2, 5)))


@needs_kernel
def test_dense_layers_dispatch_to_the_kernel(monkeypatch):
  """Dense (one contracted axis) and an output projection contracting (heads, head_dim): the jaxpr holds the
  kernel's target under impl 'auto', and the result equals XLA's int8 form; with ARJAX_CPU_KERNELS=0 XLA
  serves."""
  for apply, inputs, kernel, dn, bias in dense_layer_cases(lambda p: quant.quantize(p, min_size=0)):
    assert "arjax_int8_matmul" in str(jax.make_jaxpr(apply)(inputs))
    want = quant.int8_dot(inputs, kernel, dn, impl="xla") + bias
    np.testing.assert_allclose(jax.jit(apply)(inputs), want, rtol=1e-5, atol=1e-5)
  monkeypatch.setenv("ARJAX_CPU_KERNELS", "0")
  assert "arjax_int8_matmul" not in str(jax.make_jaxpr(lambda x: apply(x))(inputs))  # a new trace


def _exact_conv(x, w: quant.Int8):
  """The SAME 3x3 conv in numpy: each pixel quantised over its channels, int64 sums per tap, each rescaled by its
  pixels' scales (float64), times the channel scales."""
  q, scale = _quantize_rows(x)
  b, h, wd, _ = q.shape
  q = np.pad(q, ((0, 0), (1, 1), (1, 1), (0, 0)))
  scale = np.pad(scale.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = 0.0
  for dy in range(3):
    for dx in range(3):
      acc = q[:, dy:dy + h, dx:dx + wd] @ np.asarray(w.q[dy, dx], np.int64)
      y = y + acc * scale[:, dy:dy + h, dx:dx + wd]
  return y * np.asarray(w.scale, np.float64).reshape(-1)


@needs_kernel
@pytest.mark.parametrize("b,h,w,c,d", [(1, 1, 1, 4, 3), (2, 5, 7, 8, 70), (1, 3, 50, 12, 130), (2, 9, 13, 36, 200),
                                       (1, 20, 21, 16, 64), (1, 6, 9, 20, 160), (2, 3, 4, 8, 32)])
def test_conv3x3_matches_exact_integer_sums_and_xla(b, h, w, c, d):
  """One pixel, rows off the 6-row tile, D off the 64-column panel (last panels of at most 32 columns, as at the
  decoders' 160 channels, take the 2-vector tile), several 256-row blocks (22 x 23 padded
  pixels): the kernel equals numpy's per-tap int64 sums rescaled (f32 rounding of the 9-tap sum), its XLA form
  `conv3x3_reference`, and the lax conv of the dequantised pixels and kernel."""
  rng = np.random.default_rng(b * 100 + d)
  x = rng.standard_normal((b, h, w, c)).astype(np.float32) * rng.uniform(0.1, 3.0, (b, h, w, 1)).astype(np.float32)
  k = quant.quantize_kernel(jnp.asarray(rng.standard_normal((3, 3, c, d)), jnp.float32))
  got = np.asarray(jax.jit(cpu_int8.conv3x3)(jnp.asarray(x), k.q, k.scale.reshape(-1)))
  tol = dict(rtol=1e-5, atol=1e-5 * np.abs(got).max())
  np.testing.assert_allclose(got, _exact_conv(x, k), **tol)
  np.testing.assert_allclose(got, cpu_int8.conv3x3_reference(jnp.asarray(x), k.q, k.scale.reshape(-1)), **tol)
  values = quant.symmetric(jnp.asarray(x), [3]).values()
  lax = jax.lax.conv_general_dilated(values, k.values(), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(got, lax, **tol)


@needs_kernel
def test_conv3x3_zero_pixels_and_borders():
  """Zero pixels (scale 1, q 0) add nothing, and the borders see zero padding: a single nonzero pixel in a corner
  gives the kernel's taps (flipped) around it and zeros elsewhere."""
  x = jnp.zeros((1, 4, 5, 8)).at[0, 0, 0].set(jnp.arange(1.0, 9.0))
  k = quant.quantize_kernel(jax.random.normal(jax.random.PRNGKey(0), (3, 3, 8, 16)))
  got = np.asarray(cpu_int8.conv3x3(x, k.q, k.scale.reshape(-1)))
  np.testing.assert_array_equal(got[0, 2:], 0)
  np.testing.assert_array_equal(got[0, :, 2:], 0)
  np.testing.assert_allclose(got, _exact_conv(np.asarray(x), k), rtol=1e-6, atol=1e-6)
  assert np.abs(got[0, :2, :2]).min() > 0


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
  k = quant.quantize_kernel(jnp.ones((3, 3, 6, 4)))
  with pytest.raises(ValueError, match="multiple of 4"):
    cpu_int8.conv3x3(jnp.ones((1, 4, 4, 6)), k.q, k.scale.reshape(-1))
  with pytest.raises(ValueError, match=r"q \[3, 3, C, D\]"):
    cpu_int8.conv3x3(jnp.ones((1, 4, 4, 8)), k.q, k.scale.reshape(-1))
