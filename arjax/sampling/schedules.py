"""Schedules over the AR units of a sample (e.g. DiSA's annealed number of head solver steps)."""
from __future__ import annotations

import jax.numpy as jnp


def annealed_steps(steps, steps_end, progress):
  """DiSA: head steps go linearly from `steps` (progress 0) to `steps_end` (progress 1); steps_end <= 0 is off."""
  if not steps_end or steps_end <= 0:
    return steps
  return jnp.round(steps + (steps_end - steps) * progress).astype(jnp.int32)
