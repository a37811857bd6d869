"""KL-regularised conv VAE: the continuous tokenizer (latent tokens [B, h, w, latent_dim]).

image -> conv Encoder -> (mean, log-variance) -> sample (training) -> conv Decoder -> image, with
h = w = image_size / 2 ** (len(ch_mult) - 1). Loss = rec (cfg.rec_loss on the [-1, 1] scale)
+ kl_weight * KL(q(z|x) || N(0, I)) averaged over latent elements.

The latent scale factor is computed from data: `maintain` (called by the trainer every
train.maintain_every steps, outside the gradient) sets params['latent_std'] to an exponential
moving average (momentum `std_momentum`; the first call takes the batch value) of the standard
deviation of the posterior means over the batch. `encode` returns mean / latent_std, so the
paradigms see latents of roughly unit variance; `decode` multiplies it back. The loss never reads
latent_std, so its gradient is zero and the optimizer leaves it alone.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from arjax.eval.metrics import psnr
from arjax.nn import conv as conv_lib
from arjax.tokenizers.vq import REC_LOSSES, rec_loss

DEFAULTS = dict(name="vae", image_size=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8,
                latent_dim=4, kl_weight=1e-3, rec_loss="mse+l1", std_momentum=0.9)


def kl_to_standard_normal(mean, logvar):
  """Elementwise KL(N(mean, exp(logvar)) || N(0, 1))."""
  return 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


class VAENet(nn.Module):
  """Encoder to (mean, logvar) and decoder; the methods are the tokenizer's pieces."""
  stack: conv_lib.ConvConfig
  latent_dim: int

  def setup(self):
    self.encoder = conv_lib.Encoder(self.stack, 2 * self.latent_dim)
    self.decoder = conv_lib.Decoder(self.stack)
    self.latent_std = self.param("latent_std", nn.initializers.ones, ())

  def __call__(self, x_BHWC, rng):
    """(reconstruction, mean, logvar) with a reparameterised posterior sample."""
    mean, logvar = self.posterior(x_BHWC)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
    return self.decoder(z), mean, logvar

  def posterior(self, x_BHWC):
    """Images -> (mean, logvar clipped to [-30, 20]), each [B, h, w, latent_dim]."""
    mean, logvar = jnp.split(self.encoder(x_BHWC), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode_latents(self, z_BhwC):
    """Unscaled latents -> images (unclipped)."""
    return self.decoder(z_BhwC)


class VAETokenizer:
  """VAE tokenizer as a Trainable (init, loss, maintain) with encode/decode, grid, latent_dim, kind."""
  kind = "continuous"
  vocab_size = None

  def __init__(self, cfg: ml_collections.ConfigDict):
    c, self.image_size, self.grid, stack = conv_lib.autoencoder_config(cfg, DEFAULTS, REC_LOSSES)
    self.cfg = c
    self.latent_dim = int(c["latent_dim"])
    self.net = VAENet(stack, self.latent_dim)

  def _images(self, batch):
    return conv_lib.batch_images(batch, self.image_size)

  def _apply(self, params, method, *args):
    return self.net.apply({"params": params}, *args, method=method)

  def init(self, rng, batch):
    """The inner 'params' collection."""
    return self.net.init(rng, self._images(batch)[:1], rng)["params"]

  def loss(self, params, batch, rng, train=True):
    """(rec + kl_weight * KL, metrics); at train=False the posterior mean is decoded."""
    x = self._images(batch)
    rec, mean, logvar = self._apply(params, VAENet.__call__, x, rng)
    if not train:
      rec = self._apply(params, VAENet.decode_latents, mean)
    rec_l = rec_loss(rec, x, self.cfg["rec_loss"])
    kl = jnp.mean(kl_to_standard_normal(mean.astype(jnp.float32), logvar.astype(jnp.float32)))
    loss = rec_l + self.cfg["kl_weight"] * kl
    return loss, dict(loss=loss, rec_loss=rec_l, kl=kl, psnr=psnr(rec, x), latent_std=params["latent_std"])

  def maintain(self, params, batch, rng):
    """Updates params['latent_std'] from the batch's posterior means (the latent scale factor)."""
    del rng
    mean, _ = self._apply(params, VAENet.posterior, self._images(batch))
    batch_std = jnp.std(mean.astype(jnp.float32)).astype(params["latent_std"].dtype)
    first = params["latent_std"] == 1.0  # the init value: take the batch value outright
    m = self.cfg["std_momentum"]
    new = jnp.where(first, batch_std, m * params["latent_std"] + (1 - m) * batch_std)
    return {**params, "latent_std": new}

  def encode(self, params, images_BHWC):
    """Images [B, H, W, 3] in [-1, 1] -> scaled posterior means [B, h, w, latent_dim]."""
    mean, _ = self._apply(params, VAENet.posterior, self._images(dict(image=images_BHWC)))
    return mean / params["latent_std"]

  def decode(self, params, latents_BhwC):
    """Scaled latents [B, h, w, latent_dim] -> images [B, H, W, 3] clipped to [-1, 1]."""
    if latents_BhwC.ndim != 4 or tuple(latents_BhwC.shape[1:]) != (*self.grid, self.latent_dim):
      raise ValueError(f"latents must be [B, {self.grid[0]}, {self.grid[1]}, {self.latent_dim}], "
                       f"got {latents_BhwC.shape}")
    return jnp.clip(self._apply(params, VAENet.decode_latents, latents_BhwC * params["latent_std"]), -1.0, 1.0)
