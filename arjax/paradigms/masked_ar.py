"""MAR: masked autoregression over continuous VAE latent tokens with a per-token head.

A bidirectional (full-mask) encoder and decoder, MAE-style: the encoder sees [buffer of class
tokens ; latent tokens] where unknown tokens are replaced by a learned [MASK] vector (MAR drops
them instead; keeping them makes the shapes static, and the encoder never sees their values), the
decoder re-inserts its own [MASK] vector at unknown positions, and the head models each unknown
token given its decoder feature. Training: a random generation order per image, mask ratio
r ~ N(1, 0.25) truncated to [0.7, 1]; the first ceil(r N) tokens of the order are unknown and the
head loss is averaged over them. Sampling: `num_iter` steps; after step s, floor(N cos(pi/2 (s+1)/S))
tokens stay unknown (at least 1 until the last step, MAR's rule); CFG 'constant' or 'linear' in the
fraction of known tokens; head steps optionally annealed over the steps (DiSA).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arjax import heads
from arjax import masks
from arjax.nn import layers
from arjax.nn.transformer import Transformer
from arjax.paradigms.latent import LatentParadigm
from arjax.sampling import logits as logits_lib
from arjax.sampling import schedules

MASK_MEAN, MASK_STD, MASK_MIN, MASK_MAX = 1.0, 0.25, 0.7, 1.0


def mask_ratio(rng, shape):
  """Training mask ratios: N(1, 0.25) truncated to [0.7, 1]."""
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
  """(tokens [B,N,C], known [B,N], label [B]) -> decoder features [B,N,D] for the head."""
  num_classes: int
  width: int
  buffer: int
  encoder: dict
  decoder: dict

  @nn.compact
  def __call__(self, x_BNC, known_BN, label_B):
    b, n, _ = x_BNC.shape
    vec = lambda name: self.param(name, nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                                  (self.width,))
    cls = nn.Embed(self.num_classes + 1, self.width, name="class_embed",
                   embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
    buf = jnp.broadcast_to(cls(label_B)[:, None, :], (b, self.buffer, self.width))
    h = layers.dense(self.width, (None, "embed"), name="in")(x_BNC)
    h = jnp.where(known_BN[..., None], h, vec("enc_mask"))
    h, _ = Transformer(**self.encoder, name="encoder")(jnp.concatenate([buf, h], 1), masks.full())
    h = layers.dense(self.width, ("embed", "mlp"), name="enc_to_dec")(h)
    h = h.at[:, self.buffer:].set(jnp.where(known_BN[..., None], h[:, self.buffer:], vec("dec_mask")))
    h, _ = Transformer(**self.decoder, name="decoder")(h, masks.full())
    return h[:, self.buffer:]


class MaskedAR(LatentParadigm):
  """MAR as a Trainable: preprocess / init / loss / sample_latents / sample; params = {net, head}."""

  def __init__(self, cfg, tokenizer, tokenizer_params):
    super().__init__(cfg, tokenizer, tokenizer_params)
    tcfg = lambda t: dict(t, max_len=self.num_tokens + cfg.buffer)
    self.net = MarNet(cfg.num_classes, cfg.width, cfg.buffer, tcfg(cfg.encoder), tcfg(cfg.decoder))
    self.head = heads.build(self.token_dim, cfg.head)


  def init(self, rng, batch):
    k1, k2 = jax.random.split(rng)
    x = jnp.zeros((1, self.num_tokens, self.token_dim))
    net = self.net.init(k1, x, jnp.ones((1, self.num_tokens), bool), jnp.zeros((1,), jnp.int32))["params"]
    return dict(net=net, head=self.head.init(k2, jnp.zeros((1, self.cfg.width))))

  def loss(self, params, batch, rng, train=True):
    x = batch["latent"].astype(jnp.float32)
    b = x.shape[0]
    x = x.reshape(b, self.num_tokens, self.token_dim)
    label = batch["label"]
    k_drop, k_order, k_ratio, k_head = jax.random.split(rng, 4)
    if train and self.cfg.label_drop > 0:
      label = jnp.where(jax.random.bernoulli(k_drop, self.cfg.label_drop, label.shape), self.num_classes, label)
    rank = jnp.argsort(jax.random.uniform(k_order, (b, self.num_tokens)), axis=-1).argsort(axis=-1)
    n_unknown = jnp.ceil(self.num_tokens * mask_ratio(k_ratio, (b, 1)))
    unknown = rank < n_unknown
    z = self.net.apply({"params": params["net"]}, x, ~unknown, label)
    per = self.head.loss(params["head"], z.reshape(-1, z.shape[-1]), x.reshape(-1, self.token_dim), k_head)
    w = unknown.reshape(-1).astype(jnp.float32)
    loss = jnp.sum(per * w) / jnp.sum(w)
    return loss, dict(head_loss=loss, mask_ratio=jnp.mean(w))

  def sample_latents(self, params, label_B, rng, *, temperature=1.0, cfg_scale=1.0, cfg_schedule="linear",
                     num_iter=None, steps=None, steps_end=None, solver=None):
    """Latent grid [B, h, w, C] by num_iter rounds of parallel unmasking in a random order."""
    num_iter = num_iter or self.cfg.num_iter
    steps = self.cfg.head.steps if steps is None else steps
    steps_end = self.cfg.head.steps_end if steps_end is None else steps_end
    b, n, c = label_B.shape[0], self.num_tokens, self.token_dim
    use_cfg = cfg_scale != 1.0
    labels = jnp.concatenate([label_B, jnp.full_like(label_B, self.num_classes)]) if use_cfg else label_B
    k_order, rng = jax.random.split(rng)
    order = jnp.argsort(jax.random.uniform(k_order, (b, n)), axis=-1)
    tokens, known = jnp.zeros((b, n, c)), jnp.zeros((b, n), bool)
    prev = n
    for s, n_left in enumerate(unmask_schedule(n, num_iter)):
      dbl = lambda a: jnp.concatenate([a, a]) if use_cfg else a
      z = self.net.apply({"params": params["net"]}, dbl(tokens), dbl(known), labels)
      idx = order[:, n_left:prev]
      pick = lambda zz: jnp.take_along_axis(zz, idx[..., None], axis=1).reshape(-1, zz.shape[-1])
      scale = logits_lib.cfg_scale(cfg_scale, (n - n_left) / n, cfg_schedule)
      new = self.head.sample(params["head"], pick(z[:b]), jax.random.fold_in(rng, s),
                             steps=schedules.annealed_steps(steps, steps_end, s / max(num_iter - 1, 1)),
                             temperature=temperature, cfg_scale=scale, solver=solver,
                             z_uncond_ND=pick(z[b:]) if use_cfg else None)
      rows = jnp.arange(b)[:, None]
      tokens = tokens.at[rows, idx].set(new.reshape(b, -1, c))
      known = known.at[rows, idx].set(True)
      prev = n_left
    return tokens.reshape(b, *self.grid, c)
