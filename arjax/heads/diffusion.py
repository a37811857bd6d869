"""MAR-style DDPM head: eps-prediction with a cosine schedule over T steps, respaced ancestral sampling.

Sampling visits `steps` evenly spaced timesteps of the T-step chain (respacing: the betas of the
shorter chain follow from alpha-bar at the kept steps), uses the posterior variance, and
multiplies the injected noise by `temperature` (MAR). `steps` may be traced. The x_0 estimate is
clipped to [-clip_x0, clip_x0] (latents are scaled to unit variance): at the noisiest cosine steps
alpha-bar is ~1e-9 and an eps error of 1e-3 would otherwise become an x_0 error of ~20.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from arjax import heads
from arjax.heads.mlp import AdaLNMlp
from arjax.sampling import guidance


def cosine_alpha_bar(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """alpha-bar[t] for t = 0..T-1 of the cosine schedule (Nichol & Dhariwal), betas clipped at max_beta."""
  f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
  betas = [min(1 - f((i + 1) / num_steps) / f(i / num_steps), max_beta) for i in range(num_steps)]
  return np.cumprod(1.0 - np.asarray(betas, np.float64))


class DiffusionHead:
  """A Head: init / loss(params, z, x, rng) -> per-row loss / sample(params, z, rng, ...)."""

  def __init__(self, token_dim: int, cfg):
    self.token_dim = token_dim
    self.cfg = cfg
    self.num_train_steps = cfg.get("train_steps", 1000)
    self.alpha_bar = jnp.asarray(cosine_alpha_bar(self.num_train_steps), jnp.float32)
    self.net = AdaLNMlp(token_dim, cfg.width, cfg.depth)

  def init(self, rng, z_ND):
    x = jnp.zeros((z_ND.shape[0], self.token_dim), jnp.float32)
    return self.net.init(rng, x, jnp.zeros((z_ND.shape[0],)), z_ND)["params"]

  def eps(self, params, x_NC, t_N, z_ND):
    """Predicted noise [N, C] at integer steps t_N."""
    return self.net.apply({"params": params}, x_NC, t_N.astype(jnp.float32), z_ND).astype(jnp.float32)

  def loss_at(self, params, z_ND, x_NC, eps_NC, t_N):
    """Per-row eps-prediction loss for given noise and integer steps."""
    ab = self.alpha_bar[t_N][:, None]
    xt = jnp.sqrt(ab) * x_NC + jnp.sqrt(1 - ab) * eps_NC
    return jnp.mean(jnp.square(self.eps(params, xt, t_N, z_ND) - eps_NC), axis=-1)

  def loss(self, params, z_ND, x_NC, rng):
    """Per-row loss [N], averaged over cfg.batch_mul draws of (t, eps) per row."""
    m = self.cfg.get("batch_mul", 1)
    n = x_NC.shape[0]
    k_t, k_e = jax.random.split(rng)
    z, x = jnp.tile(z_ND, (m, 1)), jnp.tile(x_NC.astype(jnp.float32), (m, 1))
    t = jax.random.randint(k_t, (m * n,), 0, self.num_train_steps)
    return self.loss_at(params, z, x, jax.random.normal(k_e, x.shape), t).reshape(m, n).mean(0)

  def sample(self, params, z_ND, rng, *, guide_scale=None, steps=None, temperature=1.0, solver=None):
    """Tokens [N, C] by respaced ancestral DDPM (guide_scale: see arjax.heads; `solver` is accepted for interface
    parity and ignored)."""
    del solver
    steps = self.cfg.steps if steps is None else steps
    big_t = self.num_train_steps
    k0, key = jax.random.split(rng)
    clip = self.cfg.get("clip_x0", 5.0)
    # timestep kept at respaced index i (0 = least noisy)
    tau = lambda i: jnp.round(i * (big_t - 1) / jnp.maximum(steps - 1, 1)).astype(jnp.int32)

    eps_fn = guidance.guided(lambda x, t: self.eps(params, x, jnp.full((x.shape[0],), t), z_ND), guide_scale)

    def body(j, carry):
      x, key = carry
      i = steps - 1 - j
      t = tau(i)
      ab = self.alpha_bar[t]
      ab_prev = jnp.where(i > 0, self.alpha_bar[tau(jnp.maximum(i - 1, 0))], 1.0)
      beta = 1.0 - ab / ab_prev
      x0 = jnp.clip((x - jnp.sqrt(1 - ab) * eps_fn(x, t)) / jnp.sqrt(ab), -clip, clip)
      mean = (jnp.sqrt(ab_prev) * beta * x0 + jnp.sqrt(1 - beta) * (1 - ab_prev) * x) / (1 - ab)
      var = beta * (1 - ab_prev) / (1 - ab)
      key, sub = jax.random.split(key)
      noise = jax.random.normal(sub, x.shape)
      return mean + jnp.where(i > 0, jnp.sqrt(var) * temperature, 0.0) * noise, key

    x = jax.random.normal(k0, (heads.rows(z_ND, guide_scale), self.token_dim))
    return jax.lax.fori_loop(0, steps, body, (x, key))[0]
