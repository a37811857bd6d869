"""Blockwise AR-diffusion over continuous latent tokens (ACDiT), and the shared entity sampler.

Training sequence: [clean blocks ; noised blocks] (length 2N) under the skip_causal MaskSpec
(clean b sees clean <= b; noised b sees noised b and clean < b). Each block gets its own time
t ~ U(0, 1) on the linear flow path x_t = t x + (1 - t) eps, and the transformer's final linear
layer predicts the velocity x - eps of the noised tokens. AdaLN (class + time) modulates the noised
tokens only; clean tokens pass through the blocks' norms unmodulated (ACDiT's cond_length split).
Clean and noised copies of a token share its (2D RoPE or learned) position.

Sampling denoises entity (block) by entity with an ODE solver; the KV cache holds the clean
entities. While denoising entity k, the noised tokens are written at slot k of the cache and
attend under block_causal(sizes), which for those queries is exactly SCAM's rule (clean < k plus
themselves); the returned cache is dropped, and once entity k is clean it is written at slot k.
`NextX` (next_x.py) reuses this sampler with other entities and training sequence.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arjax import cache as cache_lib
from arjax import masks
from arjax.nn import layers
from arjax.nn import rope as rope_lib
from arjax.nn.transformer import Transformer
from arjax.paradigms.latent import LatentParadigm
from arjax.sampling import logits as logits_lib
from arjax.sampling import ode
from arjax.sampling import schedules


class BlockNet(nn.Module):
  """(tokens [B,L,C], label [B], t [B,L], clean [B,L]) -> velocity [B,L,C] and the KV cache."""
  token_dim: int
  num_classes: int
  width: int
  transformer: dict
  clean_unmodulated: bool = True  # False: the clean flags are ignored (xAR marks clean context by t = 1)

  @nn.compact
  def __call__(self, x_BLC, label_B, t_BL, clean_BL, mask, positions, cache=None):
    h = layers.dense(self.width, (None, "embed"), name="in")(x_BLC)
    cls = nn.Embed(self.num_classes + 1, self.width, name="class_embed",
                   embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
    cond_BLD = cls(label_B)[:, None, :] + layers.TimeEmbed(self.width, name="time")(t_BL * 1000.0)
    h, cache = Transformer(**self.transformer, adaln=True, name="transformer")(
        h, mask, positions=positions, cond_BC=cond_BLD, cache=cache,
        adaln_keep_BL=~clean_BL if self.clean_unmodulated else None)
    v = layers.dense(self.token_dim, ("embed", None), init=nn.initializers.zeros, name="out")(h)
    return v.astype(jnp.float32), cache


class BlockDiffusion(LatentParadigm):
  """ACDiT as a Trainable: preprocess / init / loss / sample_latents / sample."""

  def __init__(self, cfg, tokenizer, tokenizer_params):
    super().__init__(cfg, tokenizer, tokenizer_params)
    self.rope2d = cfg.transformer.get("pos") == "rope2d"
    self.setup_entities()
    tcfg = dict(cfg.transformer)
    tcfg["max_len"] = int(np.max(self.positions)) + 1
    self.net = BlockNet(self.token_dim, cfg.num_classes, cfg.width, tcfg, clean_unmodulated=self.clean_unmodulated)

  clean_unmodulated = True

  # ---- entity layout (overridden by NextX) ----
  def setup_entities(self):
    """Contiguous raster blocks of cfg.block_size tokens."""
    b = self.cfg.block_size
    if b <= 0 or self.num_tokens % b:
      raise ValueError(f"model.block_size={b} must divide the {self.num_tokens} latent tokens of grid {self.grid}")
    self.sizes = (b,) * (self.num_tokens // b)
    grid_pos = np.asarray(rope_lib.grid_positions(*self.grid))
    self.positions = grid_pos if self.rope2d else np.arange(self.num_tokens)

  def split(self, latent_BHWC):
    """Latent grid -> entity sequence [B, S, C]."""
    return latent_BHWC.reshape(latent_BHWC.shape[0], -1, latent_BHWC.shape[-1])

  def merge(self, seq_BSC):
    """Entity sequence -> latent grid [B, h, w, C]."""
    return seq_BSC.reshape(seq_BSC.shape[0], *self.grid, -1)

  def mask(self):
    """The training MaskSpec."""
    return masks.skip_causal(self.sizes[0], len(self.sizes))

  def decode_mask(self):
    """The mask under which one entity attends to the cached clean entities and itself."""
    return masks.block_causal(self.sizes)

  def clean_cond(self, n):
    """(t, clean flag) given to clean context tokens: ACDiT skips AdaLN on them (t is unused)."""
    return jnp.ones((n,)), jnp.ones((n,), bool)

  def train_inputs(self, x1_BSC, xt_BSC, t_BS):
    """(inputs, t, clean, positions, slice of the outputs that predict velocities)."""
    s = x1_BSC.shape[1]
    t_clean, clean = self.clean_cond(s)
    b = x1_BSC.shape[0]
    inputs = jnp.concatenate([x1_BSC, xt_BSC], 1)
    t = jnp.concatenate([jnp.broadcast_to(t_clean, (b, s)), t_BS], 1)
    flags = jnp.concatenate([jnp.broadcast_to(clean, (b, s)), jnp.zeros((b, s), bool)], 1)
    return inputs, t, flags, np.concatenate([self.positions, self.positions]), slice(s, 2 * s)

  def noised(self, x1_BSC, rng):
    """(x_t, t [B, S], eps): one time t ~ U(0, 1) per entity, shared by its tokens, on the linear path."""
    k_t, k_e = jax.random.split(rng)
    t_BK = jax.random.uniform(k_t, (x1_BSC.shape[0], len(self.sizes)))
    t_BS = jnp.repeat(t_BK, np.asarray(self.sizes), axis=1, total_repeat_length=x1_BSC.shape[1])
    eps = jax.random.normal(k_e, x1_BSC.shape)
    return t_BS[..., None] * x1_BSC + (1 - t_BS[..., None]) * eps, t_BS, eps

  # ---- Trainable ----

  def init(self, rng, batch):
    seq = jnp.zeros((1, sum(self.sizes), self.token_dim))
    inputs, t, flags, pos, _ = self.train_inputs(seq, seq, jnp.zeros(seq.shape[:2]))
    return self.net.init(rng, inputs, jnp.zeros((1,), jnp.int32), t, flags, self.mask(), pos)["params"]

  def loss(self, params, batch, rng, train=True):
    x1 = self.split(batch["latent"].astype(jnp.float32))
    label = batch["label"]
    k_drop, k_noise = jax.random.split(rng)
    if train and self.cfg.label_drop > 0:
      label = jnp.where(jax.random.bernoulli(k_drop, self.cfg.label_drop, label.shape), self.num_classes, label)
    xt, t_BS, eps = self.noised(x1, k_noise)
    inputs, t, flags, pos, out = self.train_inputs(x1, xt, t_BS)
    v, _ = self.net.apply({"params": params}, inputs, label, t, flags, self.mask(), pos)
    mse = jnp.mean(jnp.square(v[:, out] - (x1 - eps)))
    return mse, dict(mse=mse)

  def sample_latents(self, params, label_B, rng, *, temperature=1.0, cfg_scale=1.0, cfg_schedule="constant",
                     steps=None, steps_end=None, solver=None):
    """Latent grid [B, h, w, C], entity by entity, each by an ODE solve over a KV cache of clean entities."""
    fcfg = self.cfg.flow
    steps = fcfg.steps if steps is None else steps
    steps_end = fcfg.steps_end if steps_end is None else steps_end
    solver = solver or fcfg.solver
    b = label_B.shape[0]
    use_cfg = cfg_scale != 1.0
    labels = jnp.concatenate([label_B, jnp.full_like(label_B, self.num_classes)]) if use_cfg else label_B
    t = self.net.transformer
    cache = cache_lib.init(t["depth"], labels.shape[0], sum(self.sizes), t.get("kv_heads") or t["heads"],
                           self.cfg.width // t["heads"])
    apply = functools.partial(self.net.apply, {"params": params}, mask=self.decode_mask())
    starts = np.cumsum((0,) + self.sizes[:-1])
    n_ent = len(self.sizes)
    out = []
    for k, (start, size) in enumerate(zip(starts, self.sizes)):
      pos = self.positions[start:start + size]
      progress = k / max(n_ent - 1, 1)
      scale = logits_lib.cfg_scale(cfg_scale, progress, cfg_schedule)

      def v_fn(x, tau, pos=pos, scale=scale):
        xin = jnp.concatenate([x, x]) if use_cfg else x
        tt = jnp.full(xin.shape[:2], tau)
        v, _ = apply(xin, labels, tt, jnp.zeros(xin.shape[:2], bool), positions=pos, cache=cache)
        return v[b:] + scale * (v[:b] - v[b:]) if use_cfg else v

      k0, k1 = jax.random.split(jax.random.fold_in(rng, k))
      x0 = temperature * jax.random.normal(k0, (b, size, self.token_dim))
      xk = ode.integrate(v_fn, x0, schedules.annealed_steps(steps, steps_end, progress), solver=solver, rng=k1,
                         sde_scale=fcfg.get("sde_scale", 1.0))
      xin = jnp.concatenate([xk, xk]) if use_cfg else xk
      t_clean, clean = self.clean_cond(size)
      _, cache = apply(xin, labels, jnp.broadcast_to(t_clean, xin.shape[:2]),
                       jnp.broadcast_to(clean, xin.shape[:2]), positions=pos, cache=cache)
      out.append(xk)
    return self.merge(jnp.concatenate(out, 1))
