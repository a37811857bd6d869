"""The baselines inside the benchmark scripts compute what they stand in for: bench_matmul.py's conv variants
(shifted products, im2col) equal XLA's SAME convolution, and bench_xla_attention.py's old 5-D attention form
equals `xla_attention` and `jax.nn.dot_product_attention` (grouped heads included)."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
from conftest import ROOT

from arjax.nn.attention import xla_attention


def script(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_conv_variants_match_xla_conv():
  bench = script("bench_matmul")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 5, 6))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 6, 4))
  want = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=bench.CONV_DN,
                                      precision=jax.lax.Precision.HIGHEST)
  for fn in (bench.conv_taps, bench.conv_im2col):
    with jax.default_matmul_precision("highest"):
      np.testing.assert_allclose(fn(x, w), want, rtol=1e-5, atol=1e-5)


def test_old_attention_form_matches_xla_attention_and_jax():
  bench = script("bench_xla_attention")
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(keys[0], (2, 5, 6, 8))
  k, v = (jax.random.normal(key, (2, 3, 7, 8)) for key in keys[1:])  # 3 kv heads, 2 query heads each
  with jax.default_matmul_precision("highest"):
    old, new = bench.old_attention(q, k, v), xla_attention(q, k, v, None)
    want = jax.nn.dot_product_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2))
  np.testing.assert_allclose(old, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(new, want, rtol=1e-5, atol=1e-5)
