"""FlowAR: scale-wise AR over continuous VAE latents, a flow-matching head per token.

Scales s_0 < s_1 < ... < s_K-1 = latent grid (1, 2, 4, ...: each doubles the previous). Scale k's
target is the latent area-downsampled to s_k x s_k. The AR sequence is VAR's: [class start token(s) ;
inputs of scales 1..K-1] with learned positions + a level embedding, class AdaLN and a
block_causal(scale areas) mask (arjax/paradigms/next_scale.py's network with no vocabulary head);
the input of scale k is scale k-1's latents bicubic-upsampled to the full grid and area-downsampled
to s_k (FlowAR's rule). Every output token conditions the flow head, trained with the flow loss
averaged over all tokens (FlowAR weights each scale's mean loss by its area: the same objective).
Sampling: one transformer pass per scale over a growing KV cache, then the head solves the ODE for
all tokens of that scale at once; CFG ramps over scales; head steps optionally annealed (DiSA).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from arjax import cache as cache_lib
from arjax import config as config_lib
from arjax import heads
from arjax.nn.resize import resize
from arjax.paradigms.latent import LatentParadigm
from arjax.paradigms.next_scale import NextScaleNet
from arjax.sampling import logits as logits_lib
from arjax.sampling import schedules

KEYS = ("name", "num_classes", "width", "label_drop", "scales", "transformer", "head")


class ScaleFlow(LatentParadigm):
  """FlowAR as a Trainable: preprocess / init / loss / features / sample_latents / sample."""

  def __init__(self, cfg, tokenizer, tokenizer_params):
    config_lib.check_keys(cfg, KEYS, "model")
    super().__init__(cfg, tokenizer, tokenizer_params)
    self.scales = tuple(cfg.scales)
    if self.grid[0] != self.grid[1] or self.scales[-1] != self.grid[0] or list(self.scales) != sorted(set(self.scales)):
      raise ValueError(f"model.scales={self.scales} must increase and end at the latent grid size "
                       f"{self.grid[0]} (square grid {self.grid})")
    self.sizes = tuple(s * s for s in self.scales)
    self.starts = tuple(int(s) for s in np.cumsum((0,) + self.sizes[:-1]))
    self.net = NextScaleNet(0, cfg.num_classes, cfg.width, self.scales, dict(cfg.transformer))
    self.head = heads.build(self.token_dim, cfg.head)

  # ---- scales
  def scale_latents(self, latent_BHWC):
    """Per-scale targets: the latent area-downsampled to each scale, [B, s, s, C]."""
    return [resize(latent_BHWC, s, "area") for s in self.scales]

  def next_input(self, si, scale_BssC):
    """Scale si+1's input tokens [B, s_{si+1}^2, C] from scale si's latents."""
    up = resize(scale_BssC, self.grid[0], "bicubic")
    nxt = resize(up, self.scales[si + 1], "area")
    return nxt.reshape(nxt.shape[0], -1, nxt.shape[-1])

  def teacher_inputs(self, scales_list):
    """Inputs of scales 1..K-1 [B, L - s_0^2, C] from the given per-scale latents."""
    return jnp.concatenate([self.next_input(i, x) for i, x in enumerate(scales_list[:-1])], 1)

  # ---- Trainable

  def init(self, rng, batch):
    k1, k2 = jax.random.split(rng)
    inputs = jnp.zeros((1, sum(self.sizes) - self.sizes[0], self.token_dim))
    net = self.net.init({"params": k1, "dropout": k1}, jnp.zeros((1,), jnp.int32), inputs)["params"]
    return dict(net=net, head=self.head.init(k2, jnp.zeros((1, self.cfg.width))))

  def features(self, params, label_B, inputs_BNC, rng=None, train=False):
    """Teacher-forced features [B, L, D] of all scales in one block-causal pass."""
    rngs = {"dropout": rng} if train else None
    return self.net.apply({"params": params["net"]}, label_B, inputs_BNC, 0, train=train, rngs=rngs)[0]

  def loss(self, params, batch, rng, train=True):
    scales = self.scale_latents(batch["latent"].astype(jnp.float32))
    label = batch["label"]
    k_drop, k_path, k_head = jax.random.split(rng, 3)
    if train and self.cfg.label_drop > 0:
      label = jnp.where(jax.random.bernoulli(k_drop, self.cfg.label_drop, label.shape), self.num_classes, label)
    z = self.features(params, label, self.teacher_inputs(scales), k_path, train)
    target = jnp.concatenate([x.reshape(x.shape[0], -1, self.token_dim) for x in scales], 1)
    per = self.head.loss(params["head"], z.reshape(-1, z.shape[-1]), target.reshape(-1, self.token_dim), k_head)
    per_BL = per.reshape(z.shape[:2])
    return per.mean(), dict(flow_loss=per.mean(), flow_loss_last_scale=per_BL[:, self.starts[-1]:].mean())

  def sample_latents(self, params, label_B, rng, *, temperature=1.0, cfg_scale=1.0, cfg_schedule="linear",
                     steps=None, steps_end=None, solver=None, return_scales=False):
    """Latent grid [B, h, w, C] (and, with return_scales, every scale's latents), scale by scale."""
    steps = self.cfg.head.steps if steps is None else steps
    steps_end = self.cfg.head.steps_end if steps_end is None else steps_end
    b = label_B.shape[0]
    use_cfg = cfg_scale != 1.0
    labels = jnp.concatenate([label_B, jnp.full_like(label_B, self.num_classes)]) if use_cfg else label_B
    t = self.net.transformer
    cache = cache_lib.init(t["depth"], labels.shape[0], sum(self.sizes), t.get("kv_heads") or t["heads"],
                           self.cfg.width // t["heads"])
    feats, out = None, []
    n_scales = len(self.scales)
    for si, s in enumerate(self.scales):
      z, cache = self.net.apply({"params": params["net"]}, labels, feats, self.starts[si], cache=cache)
      progress = si / max(n_scales - 1, 1)
      z = z.reshape(-1, z.shape[-1])
      x = self.head.sample(params["head"], z[:b * s * s], jax.random.fold_in(rng, si),
                           steps=schedules.annealed_steps(steps, steps_end, progress), temperature=temperature,
                           cfg_scale=logits_lib.cfg_scale(cfg_scale, progress, cfg_schedule), solver=solver,
                           z_uncond_ND=z[b * s * s:] if use_cfg else None)
      out.append(x.reshape(b, s, s, self.token_dim))
      if si < n_scales - 1:
        feats = self.next_input(si, out[-1])
        feats = jnp.concatenate([feats, feats]) if use_cfg else feats
    return (out[-1], out) if return_scales else out[-1]
