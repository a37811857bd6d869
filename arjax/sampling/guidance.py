"""Classifier-free guidance: one combination rule, its schedules, and the one set of sampling defaults.

A guided forward pass runs on the doubled batch [cond ; null] (Conditioner.double); `combine` turns its
output (logits, velocities, noise predictions: any array whose leading axis is 2B) into the guided B rows.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

SCHEDULES = ("constant", "linear", "cosine")

# The defaults of every paradigm's sample(); a config's `sample` section overrides them.
DEFAULTS = dict(temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0, cfg_schedule="constant")


def scale_at(scale, progress, schedule: str = "constant"):
  """Guidance scale at generation progress in [0, 1]: constant, or ramped from 1 (linear / cosine)."""
  if schedule == "constant":
    return jnp.asarray(scale, jnp.float32)
  if schedule == "linear":
    return 1.0 + (scale - 1.0) * jnp.asarray(progress, jnp.float32)
  if schedule == "cosine":
    return 1.0 + (scale - 1.0) * 0.5 * (1.0 - jnp.cos(jnp.pi * jnp.asarray(progress, jnp.float32)))
  raise ValueError(f"cfg_schedule must be one of {SCHEDULES}, got {schedule!r}")


def combine(y_2B, scale):
  """uncond + scale * (cond - uncond) for y = [cond rows ; uncond rows]."""
  b = y_2B.shape[0] // 2
  cond, uncond = y_2B[:b], y_2B[b:]
  return uncond + jnp.asarray(scale, y_2B.dtype) * (cond - uncond)


def guided(fn, scale):
  """fn(x, *args) over a guided pass's [cond ; uncond] rows, as a function of x [N, ...]: runs [x ; x] and combines
  the two halves (scale None: fn itself). For heads and denoisers that guide at every solver step."""
  if scale is None:
    return fn
  return lambda x, *args: combine(fn(jnp.concatenate([x, x]), *args), scale)


@dataclasses.dataclass(frozen=True)
class Guidance:
  """CFG settings of one sampling call (hashable: a static argument of a jitted sampler)."""
  scale: float = 1.0
  schedule: str = "constant"

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"cfg_schedule must be one of {SCHEDULES}, got {self.schedule!r}")

  @property
  def on(self) -> bool:
    return self.scale != 1.0

  def at(self, progress):
    return scale_at(self.scale, progress, self.schedule)

  def double(self, x):
    """[x ; x] when guidance is on (the inputs of a guided pass), else x."""
    return jnp.concatenate([x, x]) if self.on else x
