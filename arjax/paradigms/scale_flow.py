"""FlowAR: scale-wise AR over continuous VAE latents, a flow-matching head per token.

Scales s_0 < s_1 < ... < s_K-1 = latent grid (1, 2, 4, ...). Scale k's target is the latent area-downsampled
to s_k x s_k (the scale layout's split). The backbone is arjax.nn.scale_net.ScaleNet with no vocabulary head;
the input of scale k is scale k-1's latents bicubic-upsampled to the full grid and area-downsampled to s_k
(FlowAR's rule). Every output token conditions the flow head, trained with the flow loss averaged over all
tokens (FlowAR weights each scale's mean loss by its area: the same objective). Sampling: the sampler
skeleton over scales, one transformer pass per scale over a growing KV cache, then the head solves the ODE
for all tokens of that scale at once; DiSA-annealed head steps optional.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from arjax import heads
from arjax import layout as layout_lib
from arjax.nn import scale_net
from arjax.nn.resize import resize
from arjax.nn.transformer import TransformerConfig
from arjax.paradigms import latent
from arjax.sampling import loop
from arjax.sampling.schedules import annealed_steps

KEYS = ("width", "scales", "transformer", "head")  # beyond base.COND_KEYS


class ScaleFlow(latent.LatentParadigm):
  """FlowAR (an arjax.interfaces.Paradigm); params = {net, head}."""

  def __init__(self, cfg, tokenizer, tokenizer_params):
    super().__init__(cfg, tokenizer, tokenizer_params, KEYS)
    self.layout = latent.layout_for("scales", tuple(cfg.scales), layout_lib.scale_layout, cfg.scales, self.grid)
    self.scales, self.sizes, self.starts = self.layout.scales, self.layout.sizes, self.layout.starts
    self.tcfg = TransformerConfig.make(cfg.transformer, width=cfg.width, adaln=True, max_len=self.layout.length)
    self.net = scale_net.ScaleNet(self.conditioner, self.sizes, self.tcfg)
    self.head = heads.build(self.token_dim, cfg.head)

  def scale_latents(self, latent_BHWC):
    """Per-scale targets [B, s, s, C]: the latent area-downsampled to each scale."""
    return self.per_scale(self.layout.split(latent_BHWC))

  def per_scale(self, seq_BLC):
    """Sequence [B, L, C] -> per-scale latents [B, s, s, C]."""
    return [seq_BLC[:, t:t + s * s].reshape(-1, s, s, seq_BLC.shape[-1]) for t, s in zip(self.starts, self.scales)]

  def next_input(self, si, scale_BssC):
    """Scale si+1's input tokens [B, s_{si+1}^2, C] from scale si's latents."""
    nxt = resize(resize(scale_BssC, self.grid[0], "bicubic"), self.scales[si + 1], "area")
    return nxt.reshape(nxt.shape[0], -1, nxt.shape[-1])

  def teacher_inputs(self, scales_list):
    """Inputs of scales 1..K-1 [B, L - s_0^2, C] from the given per-scale latents."""
    return jnp.concatenate([self.next_input(i, x) for i, x in enumerate(scales_list[:-1])], 1)

  def init(self, rng, batch):
    k1, k2 = jax.random.split(rng)
    inputs = jnp.zeros((1, self.layout.length - self.sizes[0], self.token_dim))
    net = self.net.init({"params": k1, "dropout": k1}, self.conditioner.example(1), inputs)["params"]
    return dict(net=net, head=self.head.init(k2, jnp.zeros((1, self.cfg.width))))

  def features(self, params, cond, inputs_BNC, rng=None, train=False):
    """Teacher-forced features [B, L, D] of all scales in one block-causal pass."""
    rngs = {"dropout": rng} if train else None
    return self.net.apply({"params": params["net"]}, cond, inputs_BNC, 0, train=train, rngs=rngs)[0]

  def loss(self, params, batch, rng, train=True):
    target_BLC = self.layout.split(batch["latent"].astype(jnp.float32))
    k_drop, k_path, k_head = jax.random.split(rng, 3)
    cond = self.conditioner.from_batch(batch)
    cond = self.conditioner.drop(cond, k_drop) if train else cond
    z = self.features(params, cond, self.teacher_inputs(self.per_scale(target_BLC)), k_path, train)
    per = self.head.loss(params["head"], z.reshape(-1, z.shape[-1]), target_BLC.reshape(-1, self.token_dim), k_head)
    per_BL = per.reshape(z.shape[:2])
    return per.mean(), dict(flow_loss=per.mean(), flow_loss_last_scale=per_BL[:, self.starts[-1]:].mean())

  # ---- sampling: the skeleton's forward (scale_net.forward) / sample / commit

  def _draw(self, opts, params, z_RnD, scale, unit, rng):
    """The head's ODE solve for every token of the scale [B, n, C] (velocities guided at each solver step; `opts`:
    loop.options with latent.FLOW_OPTIONS, None = the config's model.head value)."""
    steps = self.cfg.head.steps if opts["steps"] is None else opts["steps"]
    steps_end = self.cfg.head.steps_end if opts["steps_end"] is None else opts["steps_end"]
    x = self.head.sample(params["head"], z_RnD.reshape(-1, z_RnD.shape[-1]), rng, guide_scale=scale,
                         steps=annealed_steps(steps, steps_end, unit.progress), temperature=opts["temperature"],
                         solver=opts["solver"])
    return x.reshape(-1, unit.size, self.token_dim)

  def _commit(self, state, x_BnC, unit):
    out = state.out.at[:, unit.start:unit.start + unit.size].set(x_BnC)
    cond = state.feed[0]
    if unit.index + 1 == len(self.scales):
      return out, (cond, None), state.done_B
    s = self.scales[unit.index]
    return out, scale_net.guided_feed(cond, self.next_input(unit.index, x_BnC.reshape(-1, s, s, self.token_dim))), (
        state.done_B)

  def sample_sequence(self, params, cond, rng, opts):
    """Every scale's latents as one sequence [B, L, C], scale by scale over a KV cache."""
    guide = loop.guidance(opts)
    b = self.conditioner.batch_size(cond)
    cond = self.conditioner.double(cond) if guide.on else cond
    rows = self.conditioner.batch_size(cond)
    out = jnp.zeros((b, self.layout.length, self.token_dim), jnp.float32)
    state = loop.init_state(out, (cond, None), self.tcfg.init_cache(rows, self.layout.length), b, rng)
    forward = lambda params, state, unit: scale_net.forward(self.net, params["net"], state, unit)
    steps = loop.Steps(forward, functools.partial(self._draw, opts), self._commit)
    return loop.run(steps, params, self.sizes, state, guide).out

  def sample_latents(self, params, cond, rng, opts):
    """Latent grid [B, h, w, C]: the last scale."""
    return self.layout.merge(self.sample_sequence(params, cond, rng, opts))

  sample = latent.sampler(latent.FLOW_OPTIONS)
