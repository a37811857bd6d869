"""TokenBridge's post-training dimension-wise quantisation of a frozen KL-VAE's latents.

Every latent channel is quantised on its own with the same grid: [x_min, x_max] maps linearly onto
[-std_range, std_range] (clamped), and a value goes to the nearest of `levels` reconstruction values, the
truncated-normal means of the bins cut at the standard-normal quantiles linspace(0, 1, levels + 1) (clamped
to +-std_range; where the clamp squeezes a bin to a point, that point is its value). Nothing is trained: the
`dimwise` tokenizer wraps a trained VAE (its params are the VAE's, loaded from the VAE's workdir) and `encode`
returns the dequantised latents, i.e. values on the grid.

The per-dimension AR head (arjax.heads.dimwise) visits a token's channels in `channel_order`: ascending
spectral centroid of each channel's latent map over the VAE's training images (low-frequency, structural
channels first, as TokenBridge orders channels by frequency content).
"""
from __future__ import annotations

import functools
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from arjax import config as config_lib

KEYS = ("name", "vae", "levels", "std_range", "x_min", "x_max", "order_images")
DEFAULTS = dict(levels=64, std_range=3.0, x_min=-5.0, x_max=5.0, order_images=512)


def _check(levels, std_range, x_min=-5.0, x_max=5.0):
  if int(levels) != levels or levels < 2:
    raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
  if not std_range > 0:
    raise ValueError(f"std_range must be > 0, got {std_range!r}")
  if not x_min < x_max:
    raise ValueError(f"x_min must be < x_max, got x_min={x_min!r}, x_max={x_max!r}")


@functools.lru_cache(maxsize=None)
def _levels(levels: int, std_range: float):
  normal = statistics.NormalDist()
  inner = [normal.inv_cdf(i / levels) for i in range(1, levels)]
  bounds = np.clip(np.array([-np.inf, *inner, np.inf]), -std_range, std_range)
  a, b = bounds[:-1], bounds[1:]
  pdf = np.vectorize(normal.pdf)
  cdf = np.vectorize(normal.cdf)
  mass = cdf(b) - cdf(a)
  with np.errstate(invalid="ignore", divide="ignore"):  # a bin squeezed to a point by the clamp has mean a
    values = np.where(mass > 0, (pdf(a) - pdf(b)) / mass, a)  # E[X | a < X < b] for X ~ N(0, 1)
  bounds.flags.writeable = values.flags.writeable = False
  return bounds, values


def gaussian_levels(levels: int, std_range: float = 3.0):
  """(boundaries [levels+1], values [levels]) of the Gaussian-quantile grid in standard-normal units (float64)."""
  _check(levels, std_range)
  return _levels(int(levels), float(std_range))


def _to_unit(x, std_range, x_min, x_max):
  return (x - x_min) / (x_max - x_min) * (2 * std_range) - std_range


def quantize(x, levels: int, std_range: float = 3.0, x_min: float = -5.0, x_max: float = 5.0):
  """int32 index (same shape as x) of the nearest grid value to x mapped from [x_min, x_max] to +-std_range."""
  _check(levels, std_range, x_min, x_max)
  values = gaussian_levels(levels, std_range)[1]
  mids = jnp.asarray((values[1:] + values[:-1]) / 2, jnp.float32)
  u = jnp.clip(_to_unit(jnp.asarray(x, jnp.float32), std_range, x_min, x_max), -std_range, std_range)
  return jnp.searchsorted(mids, u, side="left").astype(jnp.int32)  # ties go to the lower value


def dequantize(idx, levels: int, std_range: float = 3.0, x_min: float = -5.0, x_max: float = 5.0):
  """The grid values at int indices idx, mapped back to [x_min, x_max] (float32, same shape)."""
  _check(levels, std_range, x_min, x_max)
  values = gaussian_levels(levels, std_range)[1]
  x = (values + std_range) / (2 * std_range) * (x_max - x_min) + x_min
  return jnp.asarray(x, jnp.float32)[idx]


def spectral_centroids(latents_BhwC) -> np.ndarray:
  """Per channel [C]: the power-weighted mean radial frequency (cycles / token, DC included) of its latent maps."""
  z = np.asarray(latents_BhwC, np.float64)
  power_hwC = np.mean(np.abs(np.fft.fft2(z, axes=(1, 2))) ** 2, axis=0)
  fy, fx = np.meshgrid(np.fft.fftfreq(z.shape[1]), np.fft.fftfreq(z.shape[2]), indexing="ij")
  radius_hw1 = np.sqrt(fy ** 2 + fx ** 2)[..., None]
  return np.sum(power_hwC * radius_hw1, axis=(0, 1)) / np.sum(power_hwC, axis=(0, 1))


class DimwiseTokenizer:
  """A trained KL-VAE with dimension-wise quantised latents (kind 'continuous': values on the grid)."""
  kind = "continuous"
  vocab_size = None

  def __init__(self, cfg):
    from arjax.tokenizers.vae import VAETokenizer
    config_lib.check_keys(cfg, KEYS, "model")
    c = {**DEFAULTS, **dict(cfg)}
    _check(c["levels"], c["std_range"], c["x_min"], c["x_max"])
    if "vae" not in cfg:
      raise ValueError("model.vae must name the trained VAE's config file ('configs/shapes/vae.py[:arg]')")
    self.vae_config = config_lib.load_config(c["vae"])
    self.vae = VAETokenizer(self.vae_config.model)
    self.levels, self.std_range = int(c["levels"]), float(c["std_range"])
    self.x_min, self.x_max = float(c["x_min"]), float(c["x_max"])
    self.order_images = int(c["order_images"])
    self.grid, self.latent_dim, self.image_size = self.vae.grid, self.vae.latent_dim, self.vae.image_size

  @property
  def grid_args(self) -> tuple:
    """(levels, std_range, x_min, x_max): the quantize / dequantize arguments after x."""
    return self.levels, self.std_range, self.x_min, self.x_max

  def init(self, rng, batch):
    """The VAE's params (used untrained only by smoke tests; real runs load the VAE's checkpoint)."""
    return self.vae.init(rng, batch)

  def loss(self, params, batch, rng, train=True):
    raise ValueError("the dimwise tokenizer has no training step: train the KL-VAE (configs/shapes/vae.py) and "
                     "point config.tokenizer.workdir at its workdir")

  def indices(self, params, images_BHWC):
    """Images -> int32 grid indices [B, h, w, C]."""
    return quantize(self.vae.encode(params, images_BHWC), *self.grid_args)

  def encode(self, params, images_BHWC):
    """Images -> dequantised latents [B, h, w, C] (grid values)."""
    return dequantize(self.indices(params, images_BHWC), *self.grid_args)

  def decode(self, params, latents_BhwC):
    """Latents [B, h, w, C] -> images in [-1, 1] (the VAE's decoder)."""
    return self.vae.decode(params, latents_BhwC)

  def channel_order(self, params) -> tuple:
    """Channels by ascending spectral centroid of the unquantised latents of the VAE's first `order_images`
    training images (data-derived; deterministic for given params)."""
    from arjax.data import pipeline
    source = pipeline.make_source(self.vae_config.data, "train", self.order_images)
    n = min(self.order_images, len(source))
    images = np.stack([pipeline.to_model_example(source[i])["image"] for i in range(n)])
    latents = jax.jit(self.vae.encode)(params, jnp.asarray(images))
    return tuple(int(c) for c in np.argsort(spectral_centroids(latents), kind="stable"))
