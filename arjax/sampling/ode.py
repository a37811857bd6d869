"""ODE / SDE solvers for the linear flow path x_t = t * x_1 + (1 - t) * x_0 (t=0 noise, t=1 data).

`v_fn(x, t)` is the velocity E[x_1 - x_0 | x_t]. The step count may be a traced int (the loop is
a `lax.fori_loop`), so a sampler can change it per generation step (diffusion-step annealing).
Euler–Maruyama integrates the SDE with the same marginals, diffusion coefficient
w(t) = sde_scale * (1 - t): dx = [v + w/2 * score] dt + sqrt(w) dW, where for this path
score(x, t) = -(x - t v) / (1 - t); the last step is a plain Euler step (no noise).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

SOLVERS = ("euler", "heun", "euler_maruyama")


def integrate(v_fn, x0, steps, *, solver="euler", rng=None, sde_scale=1.0):
  """x_1 from x_0 by `steps` uniform steps of `solver` over t in [0, 1]."""
  if solver not in SOLVERS:
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
  if solver == "euler_maruyama" and rng is None:
    raise ValueError("solver='euler_maruyama' needs an rng")
  dt = 1.0 / jnp.asarray(steps, jnp.float32)

  def body(i, carry):
    x, key = carry
    t = i.astype(jnp.float32) * dt
    v = v_fn(x, t)
    if solver == "euler":
      return x + dt * v, key
    if solver == "heun":
      v_next = v_fn(x + dt * v, t + dt)
      return x + 0.5 * dt * (v + v_next), key
    key, sub = jax.random.split(key)
    last = i == steps - 1
    drift = jnp.where(last, v, v - 0.5 * sde_scale * (x - t * v))
    sigma = jnp.where(last, 0.0, jnp.sqrt(sde_scale * (1.0 - t) * dt))
    return x + dt * drift + sigma * jax.random.normal(sub, x.shape, x.dtype), key

  key = jax.random.PRNGKey(0) if rng is None else rng
  return jax.lax.fori_loop(0, steps, body, (x0, key))[0]
