"""xAR: next-X prediction over continuous VAE latents with noisy context learning.

An entity X is the unit predicted per AR step, chosen by `model.entity` (an arjax.layout):
  token      one latent token (raster order)                       -> N entities of 1
  cell       a k x k square of neighbouring tokens (k=entity_size)  -> N/k^2 entities of k^2
  subsample  every s-th token in both axes from offset (a, b)       -> s^2 entities of N/s^2
             (s=entity_size; a non-local, strided grouping)
  scale      the whole latent area-downsampled to each of `scales`  -> one entity per scale
  image      all tokens at once                                     -> 1 entity (plain diffusion)
The transformer sees the entities in order under the layout's training mask (block_causal over the entity
sizes). Training (noisy context learning): every entity gets its own time t_k ~ U(0, 1) on the linear flow
path, the input sequence is the noised entities only, and every position predicts its entity's velocity
x - eps; so an entity is denoised from noisy, never clean, context. Sampling is ACDiT's entity sampler
(block_diffusion.sample_entities) over the same net: earlier entities are clean (t = 1) context.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from arjax import layout as layout_lib
from arjax.paradigms import block_diffusion as bd
from arjax.paradigms import latent

KEYS = ("width", "entity", "entity_size", "scales", "flow", "transformer")
ENTITIES = ("token", "cell", "subsample", "scale", "image")


class NextX(latent.LatentParadigm):
  """xAR (an arjax.interfaces.Paradigm): the entity layout, noisy-context training, the shared entity sampler."""

  def __init__(self, cfg, tokenizer, tokenizer_params):
    super().__init__(cfg, tokenizer, tokenizer_params, KEYS)
    bd.check_flow(cfg)
    kind, rope2d = cfg.entity, cfg.transformer.get("pos") == "rope2d"
    if kind not in ENTITIES:
      raise ValueError(f"model.entity must be one of {ENTITIES}, got {kind!r}")
    if kind == "scale":
      self.layout = latent.layout_for("scales", tuple(cfg.scales), layout_lib.scale_layout, cfg.scales, self.grid,
                                      rope2d=rope2d)
    else:
      size = cfg.get("entity_size", 1)
      self.layout = latent.layout_for("entity_size", size, layout_lib.grid_layout, kind, self.grid, size,
                                      rope2d=rope2d)
    self.positions = np.asarray(self.layout.positions)  # numpy, once (Layout.positions is not traceable)
    self.train_mask = self.layout.train_mask()
    # clean context is marked by t = 1 (AdaLN on every token), as in training
    self.net = bd.make_net(cfg, self.token_dim, self.conditioner, self.positions, clean_unmodulated=False)

  def train_inputs(self, x1_BSC, xt_BSC, t_BS):
    """Noisy context: only the noised entities, each with its own time; all positions predict."""
    return xt_BSC, t_BS, jnp.zeros(t_BS.shape, bool), self.positions, slice(0, x1_BSC.shape[1])

  def init(self, rng, batch):
    return bd.init_params(self, rng)

  def loss(self, params, batch, rng, train=True):
    return bd.velocity_loss(self, params, batch, rng, train)

  def sample_latents(self, params, cond, rng, opts):
    """Latent grid [B, h, w, C] (`opts`: loop.options with latent.FLOW_OPTIONS)."""
    seq = bd.sample_entities(self.net, self.layout, self.positions, self.conditioner, self.cfg.flow, params, cond,
                             rng, opts)
    return self.layout.merge(seq)

  sample = latent.sampler(latent.FLOW_OPTIONS)
