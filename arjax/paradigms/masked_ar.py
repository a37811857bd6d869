"""MAR: masked autoregression over continuous VAE latent tokens with a per-token head.

A bidirectional (full-mask) encoder and decoder, MAE-style: the encoder sees [buffer of copies of the
condition vector ; latent tokens] where unknown tokens are replaced by a learned [MASK] vector (MAR drops
them instead; keeping them makes the shapes static, and the encoder never sees their values), the
decoder re-inserts its own [MASK] vector at unknown positions, and the head models each unknown
token given its decoder feature. Training: a random generation order per image, mask ratio
r ~ N(1, 0.25) truncated to [0.7, 1] (model.mask_ratio='mar', the paper's), or r = cos(pi/2 u), u ~ U(0, 1)
('cosine': the unknown fractions the sampler's cosine rounds walk through, MaskGIT's training rule); the first
max(1, ceil(r N)) tokens of the order are unknown and the head loss is averaged over them. With 'mar' the network
never sees more than 30% of the tokens known, yet most tokens are sampled in rounds with more known (on small
budgets its predictions then get worse as more true context is given: docs/paradigm_diagnosis.md).
Sampling: the sampler skeleton over `num_iter` rounds; after round s, floor(N cos(pi/2 (s+1)/S)) tokens stay
unknown (at least 1 until the last round, MAR's rule), so the rounds are units of the tokens they reveal (next in a
random order): forward is a full bidirectional pass, the head draws the round's tokens (guided with the scale
schedule's progress = the fraction of tokens known after the round, MAR's rule), commit sets them; head steps
optionally annealed over the rounds (DiSA). With head.kind='dimwise' over
the dimwise tokenizer this is TokenBridge (docs/tokenbridge.md).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arjax import conditioning
from arjax import heads
from arjax import masks
from arjax.nn import layers
from arjax.nn import rope as rope_lib
from arjax.nn.transformer import Transformer, TransformerConfig
from arjax.paradigms import latent
from arjax.sampling import loop
from arjax.sampling import schedules

KEYS = ("width", "buffer", "num_iter", "encoder", "decoder", "head", "mask_ratio")
MASK_RATIOS = ("mar", "cosine")
OPTIONS = dict(num_iter=None, **latent.FLOW_OPTIONS)  # sampling options beyond guidance.DEFAULTS
MASK_MEAN, MASK_STD, MASK_MIN, MASK_MAX = 1.0, 0.25, 0.7, 1.0


def mask_ratio(rng, shape, kind: str = "mar"):
  """Training mask ratios: 'mar' N(1, 0.25) truncated to [0.7, 1]; 'cosine' cos(pi/2 u), u ~ U(0, 1)."""
  if kind == "cosine":
    return jnp.cos(math.pi / 2 * jax.random.uniform(rng, shape))
  lo, hi = (MASK_MIN - MASK_MEAN) / MASK_STD, (MASK_MAX - MASK_MEAN) / MASK_STD
  return MASK_MEAN + MASK_STD * jax.random.truncated_normal(rng, lo, hi, shape)


def unmask_schedule(num_tokens: int, num_iter: int):
  """Number of tokens still unknown after each of the num_iter sampling steps (ends at 0)."""
  out, unknown = [], num_tokens
  for s in range(num_iter):
    n = int(np.floor(num_tokens * np.cos(math.pi / 2 * (s + 1) / num_iter)))
    n = 0 if s == num_iter - 1 else max(1, min(unknown - 1, n))
    out.append(n)
    unknown = n
  return out


class MarNet(nn.Module):
  """(tokens [B,N,C], known [B,N], cond) -> decoder features [B,N,D] for the head. `positions` [buffer + N, 2]:
  (row, col) of each input for a rope2d encoder / decoder (the buffer tokens at (-1, -1)); None: indices."""
  conditioner: conditioning.Conditioner
  width: int
  buffer: int
  encoder: TransformerConfig
  decoder: TransformerConfig
  positions: Any = None

  @nn.compact
  def __call__(self, x_BNC, known_BN, cond):
    b, n, _ = x_BNC.shape
    vec = lambda name: self.param(name, nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                                  (self.width,))
    cond_BD = self.conditioner.embedder(self.width, name="cond")(cond)
    buf = jnp.broadcast_to(cond_BD[:, None, :], (b, self.buffer, self.width))
    h = layers.dense(self.width, (None, "embed"), name="in")(x_BNC)
    h = jnp.where(known_BN[..., None], h, vec("enc_mask"))
    h, _ = Transformer(self.encoder, name="encoder")(jnp.concatenate([buf, h], 1), masks.full(),
                                                     positions=self.positions)
    h = layers.dense(self.width, ("embed", "mlp"), name="enc_to_dec")(h)
    h = h.at[:, self.buffer:].set(jnp.where(known_BN[..., None], h[:, self.buffer:], vec("dec_mask")))
    h, _ = Transformer(self.decoder, name="decoder")(h, masks.full(), positions=self.positions)
    return h[:, self.buffer:]


class MaskedAR(latent.LatentParadigm):
  """MAR (an arjax.interfaces.Paradigm); params = {net, head}."""

  def __init__(self, cfg, tokenizer, tokenizer_params):
    super().__init__(cfg, tokenizer, tokenizer_params, KEYS)
    self.mask_kind = cfg.get("mask_ratio", "mar")
    if self.mask_kind not in MASK_RATIOS:
      raise ValueError(f"model.mask_ratio must be one of {MASK_RATIOS}, got {self.mask_kind!r}")
    pos = {cfg[part].get("pos") for part in ("encoder", "decoder")}
    if "rope2d" in pos and len(pos) > 1:
      raise ValueError(f"model.encoder.pos and model.decoder.pos: rope2d in one needs it in both, got {sorted(pos)}")
    rope2d = pos == {"rope2d"}
    tcfg = lambda part: TransformerConfig.make(cfg[part], f"model.{part}", width=cfg.width,
                                               max_len=self.num_tokens + cfg.buffer)
    positions = np.concatenate([np.full((cfg.buffer, 2), -1, np.int32), rope_lib.grid_positions(*self.grid)]) \
        if rope2d else None
    self.net = MarNet(self.conditioner, cfg.width, cfg.buffer, tcfg("encoder"), tcfg("decoder"), positions)
    self.head = heads.build(self.token_dim, cfg.head, tokenizer, tokenizer_params)

  def init(self, rng, batch):
    k1, k2 = jax.random.split(rng)
    x = jnp.zeros((1, self.num_tokens, self.token_dim))
    net = self.net.init(k1, x, jnp.ones((1, self.num_tokens), bool), self.conditioner.example(1))["params"]
    return dict(net=net, head=self.head.init(k2, jnp.zeros((1, self.cfg.width))))

  def loss(self, params, batch, rng, train=True):
    x = batch["latent"].astype(jnp.float32)
    b = x.shape[0]
    x = x.reshape(b, self.num_tokens, self.token_dim)
    k_drop, k_order, k_ratio, k_head = jax.random.split(rng, 4)
    cond = self.conditioner.from_batch(batch)
    cond = self.conditioner.drop(cond, k_drop) if train else cond
    rank = jnp.argsort(jax.random.uniform(k_order, (b, self.num_tokens)), axis=-1).argsort(axis=-1)
    n_unknown = jnp.maximum(jnp.ceil(self.num_tokens * mask_ratio(k_ratio, (b, 1), self.mask_kind)), 1)
    unknown = rank < n_unknown
    z = self.net.apply({"params": params["net"]}, x, ~unknown, cond)
    per = self.head.loss(params["head"], z.reshape(-1, z.shape[-1]), x.reshape(-1, self.token_dim), k_head)
    w = unknown.reshape(-1).astype(jnp.float32)
    loss = jnp.sum(per * w) / jnp.sum(w)
    return loss, dict(head_loss=loss, mask_ratio=jnp.mean(w))

  def sample_latents(self, params, cond, rng, opts):
    """Latent grid [B, h, w, C] by num_iter rounds of parallel unmasking in a random order (`opts`: loop.options
    with OPTIONS): the skeleton's units are the rounds, sized by unmask_schedule."""
    guide = loop.guidance(opts)
    num_iter = opts["num_iter"] or self.cfg.num_iter
    hcfg = self.cfg.head
    steps = hcfg.get("steps") if opts["steps"] is None else opts["steps"]  # None: a head without solver steps
    steps_end = hcfg.get("steps_end", 0) if opts["steps_end"] is None else opts["steps_end"]
    b, n, c = self.conditioner.batch_size(cond), self.num_tokens, self.token_dim
    k_order, rng = jax.random.split(rng)
    order_BN = jnp.argsort(jax.random.uniform(k_order, (b, n)), axis=-1)  # token generated i-th
    rank_BN = jnp.argsort(order_BN, axis=-1)  # when each token is generated
    cond = self.conditioner.double(cond) if guide.on else cond
    unit_idx = lambda unit: jax.lax.dynamic_slice_in_dim(order_BN, unit.start, unit.size, axis=1)

    def forward(params, state, unit):  # a full bidirectional pass; the features of this round's tokens
      z = self.net.apply({"params": params["net"]}, guide.double(state.out), guide.double(rank_BN < unit.start), cond)
      idx = guide.double(unit_idx(unit))
      return jnp.take_along_axis(z, idx[..., None], axis=1).reshape(-1, z.shape[-1]), state.cache

    def sample(params, z_ND, scale, unit, rng):
      if scale is not None:  # MAR's guidance progress: the fraction of tokens known after this round
        scale = guide.at((unit.start + unit.size) / n)
      return self.head.sample(params["head"], z_ND, rng, guide_scale=scale,
                              steps=schedules.annealed_steps(steps, steps_end, unit.progress),
                              temperature=opts["temperature"], solver=opts["solver"])

    def commit(state, x_NC, unit):
      out = state.out.at[jnp.arange(b)[:, None], unit_idx(unit)].set(x_NC.reshape(b, unit.size, c))
      return out, state.feed, state.done_B

    left = unmask_schedule(n, num_iter)
    sizes = tuple(int(a - z) for a, z in zip([n] + left[:-1], left))
    state = loop.init_state(out=jnp.zeros((b, n, c)), feed=None, cache=None, batch=b, rng=rng)
    tokens = loop.run(loop.Steps(forward, sample, commit), params, sizes, state, guide).out
    return tokens.reshape(b, *self.grid, c)

  sample = latent.sampler(OPTIONS)
