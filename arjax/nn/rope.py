"""Rotary position embeddings in 1D, 2D and 3D (the head dim is split evenly across axes)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _angles(pos_BL, dim: int, base: float):
  """pos [B, L] -> angles [B, L, dim//2]."""
  inv_freq = 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  return pos_BL.astype(jnp.float32)[..., None] * inv_freq


def rope_angles(pos_BLA, head_dim: int, base: float = 10000.0):
  """Angles [B, L, head_dim//2] for positions with A axes (A=1: 1D, 2: 2D rows/cols, 3: t/h/w)."""
  n_axes = pos_BLA.shape[-1]
  if head_dim % (2 * n_axes):
    raise ValueError(f"head_dim {head_dim} must be divisible by 2*{n_axes} for {n_axes}D RoPE")
  per = head_dim // n_axes
  return jnp.concatenate([_angles(pos_BLA[..., a], per, base) for a in range(n_axes)], axis=-1)


def apply_rope(x_BLHD, angles_BLK):
  """Rotates pairs (x[2i], x[2i+1]) by the angles; K = D // 2."""
  cos, sin = jnp.cos(angles_BLK)[:, :, None, :], jnp.sin(angles_BLK)[:, :, None, :]
  x = x_BLHD.astype(jnp.float32).reshape(*x_BLHD.shape[:-1], -1, 2)
  x0, x1 = x[..., 0], x[..., 1]
  out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
  return out.reshape(x_BLHD.shape).astype(x_BLHD.dtype)


def grid_positions(h: int, w: int):
  """Raster-order (row, col) positions [h*w, 2]."""
  r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")  # static: numpy, usable under jit
  return np.stack([r.reshape(-1), c.reshape(-1)], axis=-1).astype(np.int32)
