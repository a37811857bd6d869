"""xAR: next-X prediction over continuous VAE latents with noisy context learning.

An entity X is the unit predicted per AR step, chosen by `model.entity`:
  token      one latent token (raster order)                       -> N entities of 1
  cell       a k x k square of neighbouring tokens (k=entity_size)  -> N/k^2 entities of k^2
  subsample  every s-th token in both axes from offset (a, b)       -> s^2 entities of N/s^2
             (s=entity_size; a non-local, strided grouping)
  scale      the whole latent area-downsampled to each of `scales`  -> one entity per scale
  image      all tokens at once                                     -> 1 entity (plain diffusion)
The transformer sees the entities in order under block_causal(entity sizes). Training (noisy
context learning): every entity gets its own time t_k ~ U(0, 1) on the linear flow path, the
input sequence is the noised entities only, and every position predicts its entity's velocity
x - eps; so an entity is denoised from noisy, never clean, context. Sampling reuses ACDiT's
entity-by-entity ODE sampler with a KV cache: earlier entities are clean (t = 1) context.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from arjax import config as config_lib
from arjax.nn import rope as rope_lib
from arjax.nn.resize import resize
from arjax.paradigms.block_diffusion import BlockDiffusion

KEYS = ("name", "num_classes", "width", "label_drop", "entity", "entity_size", "scales", "flow", "transformer")
ENTITIES = ("token", "cell", "subsample", "scale", "image")


def entity_order(kind: str, k: int, h: int, w: int):
  """(raster indices of the grid in entity order [h*w], entity sizes) for the grid entities."""
  idx = np.arange(h * w).reshape(h, w)
  if kind == "token":
    return idx.reshape(-1), (1,) * (h * w)
  if kind == "image":
    return idx.reshape(-1), (h * w,)
  if k <= 0 or h % k or w % k:
    raise ValueError(f"model.entity_size={k} must divide the latent grid {(h, w)} for entity={kind!r}")
  blocks = idx.reshape(h // k, k, w // k, k)
  if kind == "cell":  # cell (i, j) holds rows i*k.., cols j*k..
    return blocks.transpose(0, 2, 1, 3).reshape(-1), (k * k,) * (h * w // (k * k))
  if kind == "subsample":  # entity (a, b) holds rows a, a+k, ..., cols b, b+k, ...
    return blocks.transpose(1, 3, 0, 2).reshape(-1), (h * w // (k * k),) * (k * k)
  raise ValueError(f"model.entity must be one of {ENTITIES}, got {kind!r}")


class NextX(BlockDiffusion):
  """xAR as a Trainable (BlockDiffusion's sampler and loss, xAR's entities and training sequence)."""

  clean_unmodulated = False  # clean context is marked by t = 1 (AdaLN on every token), as in training

  def setup_entities(self):
    config_lib.check_keys(self.cfg, KEYS, "model")
    h, w = self.grid
    kind = self.cfg.entity
    if kind == "scale":
      self.scales = tuple(self.cfg.scales)
      if h != w or self.scales[-1] != h or list(self.scales) != sorted(set(self.scales)):
        raise ValueError(f"model.scales={self.scales} must increase and end at the latent grid size {h} (square)")
      self.sizes = tuple(s * s for s in self.scales)
      # each scale's token (i, j) sits at the full-grid position it covers
      grid_pos = np.concatenate([np.asarray(rope_lib.grid_positions(s, s)) * (h // s) for s in self.scales])
      self.positions = grid_pos if self.rope2d else np.arange(sum(self.sizes))
      return
    self.order, self.sizes = entity_order(kind, self.cfg.get("entity_size", 1), h, w)
    self.inverse = np.argsort(self.order)
    grid_pos = np.asarray(rope_lib.grid_positions(h, w))
    self.positions = grid_pos[self.order] if self.rope2d else self.order  # learned: one vector per grid cell

  def split(self, latent_BHWC):
    """Latent grid -> entity sequence [B, S, C] (S = h*w, or the sum of scale areas)."""
    b, c = latent_BHWC.shape[0], latent_BHWC.shape[-1]
    if self.cfg.entity == "scale":
      return jnp.concatenate([resize(latent_BHWC, s, "area").reshape(b, -1, c) for s in self.scales], 1)
    return latent_BHWC.reshape(b, -1, c)[:, self.order]

  def merge(self, seq_BSC):
    """Entity sequence -> latent grid [B, h, w, C] (for scales: the last, full-size one)."""
    b, c = seq_BSC.shape[0], seq_BSC.shape[-1]
    if self.cfg.entity == "scale":
      return seq_BSC[:, -self.sizes[-1]:].reshape(b, *self.grid, c)
    return seq_BSC[:, self.inverse].reshape(b, *self.grid, c)

  def mask(self):
    return self.decode_mask()

  def clean_cond(self, n):
    return jnp.ones((n,)), jnp.zeros((n,), bool)

  def train_inputs(self, x1_BSC, xt_BSC, t_BS):
    """Noisy context: only the noised entities, each with its own time; all positions predict."""
    s = x1_BSC.shape[1]
    return xt_BSC, t_BS, jnp.zeros(t_BS.shape, bool), self.positions, slice(0, s)
