"""MAR-style DDPM head: eps-prediction (or v-prediction) with a cosine schedule over T steps, respaced ancestral
sampling (or deterministic DDIM).

Sampling visits `steps` evenly spaced timesteps of the T-step chain (respacing: the betas of the
shorter chain follow from alpha-bar at the kept steps), uses the posterior variance, and
multiplies the injected noise by `temperature` (MAR). `steps` may be traced. The x_0 estimate is
clipped to [-clip_x0, clip_x0] (latents are scaled to unit variance): at the noisiest cosine steps
alpha-bar is ~1e-9 and an eps error of 1e-3 would otherwise become an x_0 error of ~20.
cfg.prediction='v' trains v = sqrt(ab) eps - sqrt(1 - ab) x_0 (Salimans & Ho) instead of eps; solver='ddim' samples
by DDIM (eta = 0) with `temperature` scaling the initial noise; other solver names keep the ancestral sampler.
Guidance combines the network output (eps or v) of the [cond ; uncond] rows at every step.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from arjax import heads
from arjax.heads.mlp import AdaLNMlp
from arjax.sampling import guidance


PREDICTIONS = ("eps", "v")


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
    self.prediction = cfg.get("prediction", "eps")
    if self.prediction not in PREDICTIONS:
      raise ValueError(f"model.head.prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
    self.net = AdaLNMlp(token_dim, cfg.width, cfg.depth)

  def init(self, rng, z_ND):
    x = jnp.zeros((z_ND.shape[0], self.token_dim), jnp.float32)
    return self.net.init(rng, x, jnp.zeros((z_ND.shape[0],)), z_ND)["params"]

  def predict(self, params, x_NC, t_N, z_ND):
    """The network's prediction [N, C] (eps or v, per cfg.prediction) at integer steps t_N."""
    return self.net.apply({"params": params}, x_NC, t_N.astype(jnp.float32), z_ND).astype(jnp.float32)

  def loss_at(self, params, z_ND, x_NC, eps_NC, t_N):
    """Per-row eps- or v-prediction loss for given noise and integer steps."""
    ab = self.alpha_bar[t_N][:, None]
    xt = jnp.sqrt(ab) * x_NC + jnp.sqrt(1 - ab) * eps_NC
    target = eps_NC if self.prediction == "eps" else jnp.sqrt(ab) * eps_NC - jnp.sqrt(1 - ab) * x_NC
    return jnp.mean(jnp.square(self.predict(params, xt, t_N, z_ND) - target), axis=-1)

  def x0_eps(self, pred_NC, x_NC, ab):
    """(x_0, eps) estimates from the prediction at x_t with alpha-bar `ab`."""
    if self.prediction == "eps":
      return (x_NC - jnp.sqrt(1 - ab) * pred_NC) / jnp.sqrt(ab), pred_NC
    return jnp.sqrt(ab) * x_NC - jnp.sqrt(1 - ab) * pred_NC, jnp.sqrt(1 - ab) * x_NC + jnp.sqrt(ab) * pred_NC

  def loss(self, params, z_ND, x_NC, rng):
    """Per-row loss [N], averaged over cfg.batch_mul draws of (t, eps) per row."""
    m = self.cfg.get("batch_mul", 1)
    n = x_NC.shape[0]
    k_t, k_e = jax.random.split(rng)
    z, x = jnp.tile(z_ND, (m, 1)), jnp.tile(x_NC.astype(jnp.float32), (m, 1))
    t = jax.random.randint(k_t, (m * n,), 0, self.num_train_steps)
    return self.loss_at(params, z, x, jax.random.normal(k_e, x.shape), t).reshape(m, n).mean(0)

  def respaced(self, steps, j):
    """Loop step j of `steps` respaced steps: (respaced index i, timestep t, alpha-bar at t, at the next step)."""
    # timestep kept at respaced index i (0 = least noisy)
    tau = lambda i: jnp.round(i * (self.num_train_steps - 1) / jnp.maximum(steps - 1, 1)).astype(jnp.int32)
    i = steps - 1 - j
    ab_prev = jnp.where(i > 0, self.alpha_bar[tau(jnp.maximum(i - 1, 0))], 1.0)
    return i, tau(i), self.alpha_bar[tau(i)], ab_prev

  def sample(self, params, z_ND, rng, *, guide_scale=None, steps=None, temperature=1.0, solver=None):
    """Tokens [N, C] by respaced ancestral DDPM, or DDIM with solver='ddim' (guide_scale: see arjax.heads)."""
    steps = self.cfg.steps if steps is None else steps
    k0, key = jax.random.split(rng)
    pred_fn = guidance.guided(lambda x, t: self.predict(params, x, jnp.full((x.shape[0],), t), z_ND), guide_scale)
    x = jax.random.normal(k0, (heads.rows(z_ND, guide_scale), self.token_dim))
    if solver == "ddim":
      return self.ddim(pred_fn, temperature * x, steps)
    clip = self.cfg.get("clip_x0", 5.0)

    def body(j, carry):
      x, key = carry
      i, t, ab, ab_prev = self.respaced(steps, j)
      beta = 1.0 - ab / ab_prev
      x0 = jnp.clip(self.x0_eps(pred_fn(x, t), x, ab)[0], -clip, clip)
      mean = (jnp.sqrt(ab_prev) * beta * x0 + jnp.sqrt(1 - beta) * (1 - ab_prev) * x) / (1 - ab)
      var = beta * (1 - ab_prev) / (1 - ab)
      key, sub = jax.random.split(key)
      noise = jax.random.normal(sub, x.shape)
      return mean + jnp.where(i > 0, jnp.sqrt(var) * temperature, 0.0) * noise, key

    return jax.lax.fori_loop(0, steps, body, (x, key))[0]

  def ddim(self, pred_fn, x_NC, steps):
    """Deterministic DDIM (eta = 0) from x_T over `steps` respaced timesteps; pred_fn(x, t) -> eps or v."""
    clip = self.cfg.get("clip_x0", 5.0)

    def body(j, x):
      _, t, ab, ab_prev = self.respaced(steps, j)
      x0, eps = self.x0_eps(pred_fn(x, t), x, ab)
      return jnp.sqrt(ab_prev) * jnp.clip(x0, -clip, clip) + jnp.sqrt(1 - ab_prev) * eps

    return jax.lax.fori_loop(0, steps, body, x_NC)
