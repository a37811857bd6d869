"""Resampling of square maps as static matrices: exactly torch's F.interpolate 'area' and 'bicubic'
(align_corners=False), as VAR's multi-scale VQ and the scale-wise paradigms use them."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST


@functools.lru_cache(maxsize=None)
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] adaptive average pooling weights."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    s, e = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
    m[i, s:e] = 1.0 / (e - s)
  return m


@functools.lru_cache(maxsize=None)
def bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
  """[n_out, n_in] bicubic (Keys a=-0.75, border-clamped) interpolation weights."""
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  m = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    x = (i + 0.5) * n_in / n_out - 0.5
    x0 = int(np.floor(x))
    t = x - x0
    for k, w in enumerate((far(t + 1), near(t), near(1 - t), far(2 - t))):
      m[i, min(max(x0 - 1 + k, 0), n_in - 1)] += w
  return m.astype(np.float32)


def resize(x_BHWC, size: int, kind: str):
  """Separable 'area' or 'bicubic' resize of a square map to size x size."""
  make = area_matrix if kind == "area" else bicubic_matrix
  mh, mw = make(x_BHWC.shape[1], size), make(x_BHWC.shape[2], size)
  x = jnp.einsum("oh,bhwc->bowc", mh, x_BHWC, precision=HIGHEST)
  return jnp.einsum("pw,bowc->bopc", mw, x, precision=HIGHEST)
