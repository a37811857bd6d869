"""Dimension-wise quantisation: the Gaussian-quantile grid against scipy's closed forms, nearest-value
quantisation (brute force), idempotence, the frequency statistic, the tokenizer over a VAE, bad input."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import ROOT
from scipy import stats

from arjax.tokenizers import dimwise


@pytest.mark.parametrize("levels,std_range", [(2, 3.0), (16, 3.0), (64, 2.0), (256, 3.0)])
def test_levels_and_values_are_the_clamped_quantiles_and_truncated_normal_means(levels, std_range):
  bounds, values = dimwise.gaussian_levels(levels, std_range)
  want = np.clip(stats.norm.ppf(np.linspace(0, 1, levels + 1)), -std_range, std_range)
  np.testing.assert_allclose(bounds, want, atol=1e-12)
  # a bin the clamp squeezes to a point (levels=64, std_range=2: ppf(1/64) < -2) has that point as its mean
  means = [a if a == b else stats.truncnorm(a, b).mean() for a, b in zip(want[:-1], want[1:])]
  np.testing.assert_allclose(values, means, atol=1e-9)
  assert bounds.shape == (levels + 1,) and values.shape == (levels,) and np.all(np.diff(values) > 0)


@pytest.mark.parametrize("levels", [3, 16, 256])
def test_quantize_is_the_nearest_value_and_idempotent(levels):
  x_min, x_max, s = -4.0, 6.0, 2.5
  grid = (levels, s, x_min, x_max)
  idx = np.arange(levels)
  values = np.asarray(dimwise.dequantize(idx, *grid))
  np.testing.assert_allclose(values, (dimwise.gaussian_levels(levels, s)[1] + s) / (2 * s) * 10.0 - 4.0, rtol=1e-6)
  np.testing.assert_array_equal(dimwise.quantize(values, *grid), idx)  # the values are fixed points
  x = np.random.default_rng(0).uniform(-8, 9, (2000,)).astype(np.float32)
  got = np.asarray(dimwise.quantize(x, *grid))
  brute = np.argmin(np.abs(np.clip(x, x_min, x_max)[:, None] - values[None]), axis=1)
  np.testing.assert_array_equal(got, brute)
  assert got.dtype == np.int32 and got[x > x_max].min() == levels - 1 and got[x < x_min].max() == 0
  again = dimwise.dequantize(got, *grid)
  np.testing.assert_array_equal(dimwise.quantize(again, *grid), got)


def test_bad_grid_arguments_are_errors():
  for call in (lambda: dimwise.gaussian_levels(1), lambda: dimwise.quantize(jnp.zeros(3), 1),
               lambda: dimwise.dequantize(jnp.zeros(3, jnp.int32), 0)):
    with pytest.raises(ValueError, match="levels must be an integer >= 2"):
      call()
  for lo, hi in ((1.0, 1.0), (2.0, -2.0)):
    with pytest.raises(ValueError, match="x_min must be < x_max"):
      dimwise.quantize(jnp.zeros(3), 16, x_min=lo, x_max=hi)
    with pytest.raises(ValueError, match="x_min must be < x_max"):
      dimwise.dequantize(jnp.zeros(3, jnp.int32), 16, x_min=lo, x_max=hi)
  with pytest.raises(ValueError, match="std_range"):
    dimwise.gaussian_levels(16, 0.0)


def test_spectral_centroids_of_known_maps():
  h = w = 8
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  maps = np.stack([np.full((h, w), 2.0),                    # DC only: 0
                   np.cos(2 * np.pi * xx / w),               # one cycle along x: 1/8
                   (-1.0) ** (yy + xx),                      # checkerboard: |(1/2, 1/2)|
                   np.cos(2 * np.pi * 2 * yy / h) + 1.0], -1)  # power 4096 at DC, 2 x 1024 at |f| = 1/4
  got = dimwise.spectral_centroids(np.stack([maps, 3 * maps]))
  np.testing.assert_allclose(got, [0.0, 1 / 8, np.sqrt(0.5), 0.25 * 2048 / 6144], atol=1e-12)


def tokenizer_cfg(**kw):
  vae = os.path.join(ROOT, "configs", "shapes", "vae.py") + ":smoke"
  return ml_collections.ConfigDict({**dict(name="dimwise", vae=vae, levels=16, x_min=-3.0, x_max=3.0, order_images=8),
                                    **kw})


def test_tokenizer_wraps_the_vae_with_grid_values():
  tok = dimwise.DimwiseTokenizer(tokenizer_cfg())
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3), minval=-1, maxval=1)
  params = tok.init(jax.random.PRNGKey(1), dict(image=images))
  lat = np.asarray(tok.encode(params, images))
  want = dimwise.dequantize(dimwise.quantize(tok.vae.encode(params, images), 16, 3.0, -3.0, 3.0), 16, 3.0, -3.0, 3.0)
  np.testing.assert_array_equal(lat, want)
  assert lat.shape == (2, *tok.grid, tok.latent_dim) and len(np.unique(lat)) <= 16
  assert sorted(tok.channel_order(params)) == list(range(tok.latent_dim))
  with pytest.raises(ValueError, match="no training step"):
    tok.loss(params, dict(image=images), jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="x_min must be < x_max"):
    dimwise.DimwiseTokenizer(tokenizer_cfg(x_min=1.0, x_max=-1.0))
  with pytest.raises(ValueError, match="levels must be"):
    dimwise.DimwiseTokenizer(tokenizer_cfg(levels=1))
  with pytest.raises(ValueError, match="unknown key"):
    dimwise.DimwiseTokenizer(tokenizer_cfg(level=3))
