"""Blockwise AR-diffusion over continuous latent tokens (ACDiT), and the entity machinery it shares with xAR.

Training sequence: [clean blocks ; noised blocks] (length 2N) under skip_causal over the layout's blocks
(clean b sees clean <= b; noised b sees noised b and clean < b). Each block gets its own time
t ~ U(0, 1) on the linear flow path x_t = t x + (1 - t) eps, and the transformer's final linear
layer predicts the velocity x - eps of the noised tokens. AdaLN (condition + time) modulates the noised
tokens only; clean tokens pass through the blocks' norms unmodulated (ACDiT's cond_length split).
Clean and noised copies of a token share its (2D RoPE or learned) position.

`sample_entities` (ACDiT's and xAR's sampler) runs the sampler skeleton over a layout's entities (blocks,
cells, scales, ...): forward writes the previous, now clean entity into the KV cache (clean context:
`BlockNet.clean_unmodulated` skips AdaLN on it, else it is given t = 1) and returns the denoiser of the
current entity over that cache: its noised tokens take the next sequence indices and attend under the
layout's decode mask (block_causal: the clean entities before it and itself, which is SCAM's rule for a noised
block; the denoiser's cache is dropped); sample solves the flow ODE from noise with guidance on the velocity
and DiSA-annealed steps; commit stores the entity and feeds it to the next step.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arjax import conditioning
from arjax import config as config_lib
from arjax import layout as layout_lib
from arjax import masks
from arjax.nn import layers
from arjax.nn.transformer import Transformer, TransformerConfig
from arjax.paradigms import latent
from arjax.sampling import guidance
from arjax.sampling import loop
from arjax.sampling import ode
from arjax.sampling import schedules

KEYS = ("width", "block_size", "flow", "transformer")
FLOW_KEYS = ("steps", "steps_end", "solver", "sde_scale")


class BlockNet(nn.Module):
  """(tokens [B,L,C], cond, t [B,L], clean [B,L]) -> velocity [B,L,C] and the KV cache."""
  token_dim: int
  conditioner: conditioning.Conditioner
  tcfg: TransformerConfig  # with adaln=True
  clean_unmodulated: bool = True  # False: the clean flags are ignored (xAR marks clean context by t = 1)

  @nn.compact
  def __call__(self, x_BLC, cond, t_BL, clean_BL, mask, positions, cache=None):
    w = self.tcfg.width
    h = layers.dense(w, (None, "embed"), name="in")(x_BLC)
    cond_BLD = (self.conditioner.embedder(w, name="cond")(cond)[:, None, :]
                + layers.TimeEmbed(w, name="time")(t_BL * 1000.0))
    h, cache = Transformer(self.tcfg, name="transformer")(
        h, mask, positions=positions, cond_BC=cond_BLD, cache=cache, whole_unit=cache is not None,
        adaln_keep_BL=~clean_BL if self.clean_unmodulated else None)
    v = layers.dense(self.token_dim, ("embed", None), init=nn.initializers.zeros, name="out")(h)
    return v.astype(jnp.float32), cache


def check_flow(cfg):
  config_lib.check_keys(cfg.flow, FLOW_KEYS, "model.flow")


def make_net(cfg, token_dim, conditioner, positions, clean_unmodulated):
  """The BlockNet of an entity paradigm over `positions` (learned positions: one row per position)."""
  tcfg = TransformerConfig.make(cfg.transformer, width=cfg.width, adaln=True, max_len=int(np.max(positions)) + 1)
  return BlockNet(token_dim, conditioner, tcfg, clean_unmodulated)


def noised(x1_BSC, sizes, rng):
  """(x_t, t [B, S], eps): one time t ~ U(0, 1) per entity of `sizes`, shared by its tokens, on the linear path."""
  k_t, k_e = jax.random.split(rng)
  t_BK = jax.random.uniform(k_t, (x1_BSC.shape[0], len(sizes)))
  t_BS = jnp.repeat(t_BK, np.asarray(sizes), axis=1, total_repeat_length=x1_BSC.shape[1])
  eps = jax.random.normal(k_e, x1_BSC.shape)
  return t_BS[..., None] * x1_BSC + (1 - t_BS[..., None]) * eps, t_BS, eps


def init_params(model, rng):
  """Parameters of an entity paradigm (`model`: layout, conditioner, net, train_mask, train_inputs)."""
  seq = jnp.zeros((1, model.layout.length, model.token_dim))
  inputs, t, flags, pos, _ = model.train_inputs(seq, seq, jnp.zeros(seq.shape[:2]))
  return model.net.init(rng, inputs, model.conditioner.example(1), t, flags, model.train_mask, pos)["params"]


def velocity_loss(model, params, batch, rng, train):
  """(mse, metrics): the velocity regression of an entity paradigm on a batch (see init_params)."""
  x1 = model.layout.split(batch["latent"].astype(jnp.float32))
  k_drop, k_noise = jax.random.split(rng)
  cond = model.conditioner.from_batch(batch)
  cond = model.conditioner.drop(cond, k_drop) if train else cond
  xt, t_BS, eps = noised(x1, model.layout.sizes, k_noise)
  inputs, t, flags, pos, out = model.train_inputs(x1, xt, t_BS)
  v, _ = model.net.apply({"params": params}, inputs, cond, t, flags, model.train_mask, pos)
  mse = jnp.mean(jnp.square(v[:, out] - (x1 - eps)))
  return mse, dict(mse=mse)


def sample_entities(net: BlockNet, layout: layout_lib.Layout, positions, conditioner, flow, params, cond, rng, opts):
  """The sequence [B, L, C] of `layout` (token `positions`), entity by entity: each solved from noise by the flow
  ODE (`flow`: the config's steps / steps_end / solver / sde_scale, overridden by `opts`) over a KV cache of the
  entities before it."""
  guide = loop.guidance(opts)
  steps = flow.steps if opts["steps"] is None else opts["steps"]
  steps_end = flow.steps_end if opts["steps_end"] is None else opts["steps_end"]
  solver = opts["solver"] or flow.solver
  b = conditioner.batch_size(cond)
  cond = conditioner.double(cond) if guide.on else cond
  rows = conditioner.batch_size(cond)
  apply = lambda params, x, t, clean, start, cache: net.apply(
      {"params": params}, x, cond, jnp.broadcast_to(t, x.shape[:2]), jnp.broadcast_to(clean, x.shape[:2]),
      layout.decode_mask(), jax.lax.dynamic_slice_in_dim(jnp.asarray(positions), start, x.shape[1]), cache=cache)

  def forward(params, state, unit):
    prev = state.feed  # the previous entity, clean (unit 0: a placeholder, not written)
    write = lambda cache: apply(params, prev, 1.0, True, unit.start - prev.shape[1], cache)[1]
    cache = jax.lax.cond(unit.index > 0, write, lambda cache: cache, state.cache)
    return lambda x, tau: apply(params, x, tau, False, unit.start, cache)[0], cache

  def sample(params, v_fn, scale, unit, rng):
    k0, k1 = jax.random.split(rng)
    x0 = opts["temperature"] * jax.random.normal(k0, (b, unit.size, net.token_dim))
    return ode.integrate(guidance.guided(v_fn, scale), x0, schedules.annealed_steps(steps, steps_end, unit.progress),
                         solver=solver, rng=k1, sde_scale=flow.get("sde_scale", 1.0))

  def commit(state, x_BSC, unit):
    return jax.lax.dynamic_update_slice_in_dim(state.out, x_BSC, unit.start, axis=1), guide.double(x_BSC), state.done_B

  state = loop.init_state(out=jnp.zeros((b, layout.length, net.token_dim)),
                          feed=jnp.zeros((rows, layout.sizes[0], net.token_dim)),
                          cache=net.tcfg.init_cache(rows, layout.length), batch=b, rng=rng)
  return loop.run(loop.Steps(forward, sample, commit), params, layout.sizes, state, guide).out


class BlockDiffusion(latent.LatentParadigm):
  """ACDiT (an arjax.interfaces.Paradigm): blocks of `model.block_size` raster tokens."""

  def __init__(self, cfg, tokenizer, tokenizer_params):
    super().__init__(cfg, tokenizer, tokenizer_params, KEYS)
    check_flow(cfg)
    self.layout = latent.layout_for("block_size", cfg.block_size, layout_lib.grid_layout, "block", self.grid,
                                    cfg.block_size, rope2d=cfg.transformer.get("pos") == "rope2d")
    self.positions = np.asarray(self.layout.positions)  # numpy, once (Layout.positions is not traceable)
    self.train_mask = masks.skip_causal(cfg.block_size, self.layout.num_units)
    self.net = make_net(cfg, self.token_dim, self.conditioner, self.positions, clean_unmodulated=True)

  def train_inputs(self, x1_BSC, xt_BSC, t_BS):
    """(inputs [clean ; noised], t, clean flags, positions, slice of the outputs that predict velocities)."""
    b, s = t_BS.shape
    inputs = jnp.concatenate([x1_BSC, xt_BSC], 1)
    t = jnp.concatenate([jnp.ones((b, s)), t_BS], 1)  # the clean half's t is unused (AdaLN is skipped there)
    flags = jnp.concatenate([jnp.ones((b, s), bool), jnp.zeros((b, s), bool)], 1)
    return inputs, t, flags, np.concatenate([self.positions] * 2), slice(s, 2 * s)

  def init(self, rng, batch):
    return init_params(self, rng)

  def loss(self, params, batch, rng, train=True):
    return velocity_loss(self, params, batch, rng, train)

  def sample_latents(self, params, cond, rng, opts):
    """Latent grid [B, h, w, C] (`opts`: loop.options with latent.FLOW_OPTIONS)."""
    seq = sample_entities(self.net, self.layout, self.positions, self.conditioner, self.cfg.flow, params, cond, rng,
                          opts)
    return self.layout.merge(seq)

  sample = latent.sampler(latent.FLOW_OPTIONS)
