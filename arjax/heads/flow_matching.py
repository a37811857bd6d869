"""Flow-matching head: p(x | z) for a continuous token x given a backbone feature z.

Linear path x_t = t * x + (1 - t) * eps (t=0 noise, t=1 data), v-prediction loss
|v(x_t, t, z) - (x - eps)|^2, sampled with Euler, Heun or Euler–Maruyama (arjax/sampling/ode.py).
Temperature scales the initial noise; classifier-free guidance combines the conditional and
unconditional velocities at every solver step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from arjax import heads
from arjax.heads.mlp import AdaLNMlp
from arjax.sampling import guidance
from arjax.sampling import ode

TIME_SCALE = 1000.0  # t in [0, 1] is embedded as t * 1000, like a discrete diffusion step


class FlowMatchingHead:
  """A Head: init(rng, z) / loss(params, z, x, rng) -> per-row loss / sample(params, z, rng, ...)."""

  def __init__(self, token_dim: int, cfg):
    self.token_dim = token_dim
    self.cfg = cfg
    self.net = AdaLNMlp(token_dim, cfg.width, cfg.depth)

  def init(self, rng, z_ND):
    x = jnp.zeros((z_ND.shape[0], self.token_dim), jnp.float32)
    return self.net.init(rng, x, jnp.zeros((z_ND.shape[0],)), z_ND)["params"]

  def velocity(self, params, x_NC, t_N, z_ND):
    """The predicted velocity [N, C]."""
    return self.net.apply({"params": params}, x_NC, t_N * TIME_SCALE, z_ND).astype(jnp.float32)

  def loss_at(self, params, z_ND, x_NC, eps_NC, t_N):
    """Per-row v-prediction loss for given noise and times."""
    xt = t_N[:, None] * x_NC + (1.0 - t_N[:, None]) * eps_NC
    return jnp.mean(jnp.square(self.velocity(params, xt, t_N, z_ND) - (x_NC - eps_NC)), axis=-1)

  def loss(self, params, z_ND, x_NC, rng):
    """Per-row loss [N], averaged over cfg.batch_mul independent (t, eps) draws per row."""
    m = self.cfg.get("batch_mul", 1)
    n = x_NC.shape[0]
    k_t, k_e = jax.random.split(rng)
    z, x = jnp.tile(z_ND, (m, 1)), jnp.tile(x_NC.astype(jnp.float32), (m, 1))
    t = jax.random.uniform(k_t, (m * n,))
    eps = jax.random.normal(k_e, x.shape)
    return self.loss_at(params, z, x, eps, t).reshape(m, n).mean(0)

  def sample(self, params, z_ND, rng, *, guide_scale=None, steps=None, temperature=1.0, solver=None):
    """Tokens [N, C] by the ODE solver from temperature-scaled noise; guide_scale: see arjax.heads."""
    k0, k1 = jax.random.split(rng)
    v_fn = guidance.guided(lambda x, t: self.velocity(params, x, jnp.full((x.shape[0],), t), z_ND), guide_scale)
    x0 = temperature * jax.random.normal(k0, (heads.rows(z_ND, guide_scale), self.token_dim))
    return ode.integrate(v_fn, x0, self.cfg.steps if steps is None else steps, solver=solver or self.cfg.solver,
                         rng=k1, sde_scale=self.cfg.get("sde_scale", 1.0))
