"""Layouts: how a sample is cut into AR units, in what order, at which positions, under which masks.

A Layout is a sequence of `length` tokens cut into units of `sizes` (generated one unit per AR step).
Grid layouts permute the tokens of an h x w grid (`order[s]` is the raster index of sequence token s):
raster tokens, k x k cells, strided subsamples, fixed-size blocks, the whole image. The scale layout holds a
pyramid of area-downsampled grids (VAR / FlowAR / xAR's scale entity). Each layout gives the training mask
(block_causal over its units, or causal when every unit is one token) and the decoding mask, the positions
(2D grid positions for RoPE, or sequence indices), split (grid -> sequence) and merge (sequence -> grid).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from arjax import masks
from arjax.nn import rope as rope_lib
from arjax.nn.resize import resize

GRID_KINDS = ("token", "cell", "subsample", "block", "image")


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
  """AR units over an h x w grid (or a pyramid of scales); see the module docstring."""
  grid: tuple
  sizes: tuple
  order: Optional[np.ndarray] = None  # grid layouts: raster index of each sequence token
  scales: tuple = ()                  # scale layout: side of each scale (the last is the grid)
  rope2d: bool = False

  @property
  def length(self) -> int:
    return sum(self.sizes)

  @property
  def num_units(self) -> int:
    return len(self.sizes)

  @property
  def starts(self) -> tuple:
    return tuple(int(s) for s in np.cumsum((0,) + self.sizes[:-1]))

  @property
  def positions(self) -> np.ndarray:
    """Per-token positions: grid (row, col) [L, 2] with rope2d (a scale's token sits at the full-grid cell
    it covers), else sequence indices [L] (learned positions / 1D RoPE)."""
    if not self.rope2d:
      return np.arange(self.length)
    if self.scales:
      h = self.grid[0]
      return np.concatenate([np.asarray(rope_lib.grid_positions(s, s)) * (h // s) for s in self.scales])
    return np.asarray(rope_lib.grid_positions(*self.grid))[self.order]

  def positions_at(self, start, size: int):
    """Positions of tokens [start, start + size); start may be traced."""
    pos = jnp.asarray(self.positions)
    return jax.lax.dynamic_slice_in_dim(pos, start, size, axis=0)

  def train_mask(self):
    """Each unit sees itself and the units before it (causal when every unit is one token)."""
    return masks.causal() if set(self.sizes) == {1} else masks.block_causal(self.sizes)

  decode_mask = train_mask

  def split(self, grid_BHWC):
    """Grid [B, h, w, C] -> sequence [B, L, C] in unit order (scales: every area-downsampled scale)."""
    b, c = grid_BHWC.shape[0], grid_BHWC.shape[-1]
    if self.scales:
      return jnp.concatenate([resize(grid_BHWC, s, "area").reshape(b, -1, c) for s in self.scales], 1)
    return grid_BHWC.reshape(b, -1, c)[:, self.order]

  def merge(self, seq_BLC):
    """Sequence [B, L, C] -> grid [B, h, w, C] (scales: the last, full-size scale)."""
    b, c = seq_BLC.shape[0], seq_BLC.shape[-1]
    if self.scales:
      return seq_BLC[:, -self.sizes[-1]:].reshape(b, *self.grid, c)
    return seq_BLC[:, np.argsort(self.order)].reshape(b, *self.grid, c)


def grid_layout(kind: str, grid, k: int = 1, rope2d: bool = False) -> Layout:
  """A permutation of the h x w grid into units: token (raster), cell (k x k squares), subsample (stride k,
  k^2 units), block (k consecutive raster tokens), image (one unit)."""
  h, w = grid
  idx = np.arange(h * w).reshape(h, w)
  if kind == "token":
    return Layout(tuple(grid), (1,) * (h * w), idx.reshape(-1), rope2d=rope2d)
  if kind == "image":
    return Layout(tuple(grid), (h * w,), idx.reshape(-1), rope2d=rope2d)
  if kind == "block":
    if k <= 0 or (h * w) % k:
      raise ValueError(f"block size {k} must divide the {h * w} tokens of grid {tuple(grid)}")
    return Layout(tuple(grid), (k,) * (h * w // k), idx.reshape(-1), rope2d=rope2d)
  if kind not in GRID_KINDS:
    raise ValueError(f"layout kind must be one of {GRID_KINDS + ('scale',)}, got {kind!r}")
  if k <= 0 or h % k or w % k:
    raise ValueError(f"{kind} size {k} must divide the grid {tuple(grid)}")
  blocks = idx.reshape(h // k, k, w // k, k)
  if kind == "cell":  # cell (i, j) holds rows i*k.., cols j*k..
    return Layout(tuple(grid), (k * k,) * (h * w // (k * k)), blocks.transpose(0, 2, 1, 3).reshape(-1), rope2d=rope2d)
  # subsample (a, b) holds rows a, a+k, ..., cols b, b+k, ...
  return Layout(tuple(grid), (h * w // (k * k),) * (k * k), blocks.transpose(1, 3, 0, 2).reshape(-1), rope2d=rope2d)


def scale_layout(scales, grid, rope2d: bool = False) -> Layout:
  """A pyramid of s x s scales (increasing, the last equal to the square grid), one unit per scale."""
  scales = tuple(int(s) for s in scales)
  if grid[0] != grid[1] or scales[-1] != grid[0] or list(scales) != sorted(set(scales)):
    raise ValueError(f"scales {scales} must increase and end at the latent grid size {grid[0]} (square grid "
                     f"{tuple(grid)})")
  return Layout(tuple(grid), tuple(s * s for s in scales), scales=scales, rope2d=rope2d)
