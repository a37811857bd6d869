"""What the continuous-token paradigms (MAR, ACDiT, FlowAR, xAR) share: VAE latents in, images out.

A subclass calls LatentParadigm.__init__, defines sample_latents(params, cond, rng, opts) -> latent grid
[B, h, w, C] (`opts`: loop.options) and gets its `sample(params, cond, rng, **opts)` from `sampler(extra)`.
"""
from __future__ import annotations

from arjax.paradigms import base
from arjax.sampling import loop

# the sampling options of the flow-solved paradigms beyond guidance.DEFAULTS (None: the config's value)
FLOW_OPTIONS = dict(steps=None, steps_end=None, solver=None)


class LatentParadigm(base.Paradigm):
  """A paradigm over the latent grid of a continuous tokenizer; preprocess (VAE encode)."""

  def __init__(self, cfg, tokenizer, tokenizer_params, keys):
    super().__init__(cfg, tokenizer, tokenizer_params, keys)
    self.token_dim = tokenizer.latent_dim
    self.num_tokens = self.grid[0] * self.grid[1]

  def preprocess(self, batch):
    """Images -> scaled VAE latents [B, h, w, C] with the frozen tokenizer; the conditioning entries pass through."""
    return dict(self.conditioner.from_batch(batch), latent=self.tokenizer.encode(self.tokenizer_params, batch["image"]))


def sampler(extra: dict):
  """A latent paradigm's `sample(params, cond, rng, **opts)`: sample_latents, decoded; options: the defaults + extra."""

  @loop.sampler(extra)
  def sample(self, params, cond, rng, opts):
    """Images [B, H, W, 3] in [-1, 1] for `cond` ({'label': [B]} or {'caption': [B, Lc]})."""
    return self.tokenizer.decode(self.tokenizer_params, self.sample_latents(params, cond, rng, opts))

  return sample


def layout_for(key: str, value, make, *args, **kw):
  """make(*args, **kw) (a Layout); a ValueError it raises names the config entry `model.<key>=<value>`."""
  try:
    return make(*args, **kw)
  except ValueError as e:
    raise ValueError(f"model.{key}={value}: {e}") from None
