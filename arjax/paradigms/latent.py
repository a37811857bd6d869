"""What the continuous-token paradigms (MAR, ACDiT, FlowAR, xAR) share: VAE latents in, images out.

A subclass calls LatentParadigm.__init__ and defines sample_latents(params, label_B,
rng, *, temperature, ...) -> latent grid [B, h, w, C]; its keyword options are passed through.
"""
from __future__ import annotations

import functools

import jax

# sampler options that change the traced program (everything but temperature)
STATIC_OPTIONS = ("cfg_scale", "cfg_schedule", "num_iter", "steps", "steps_end", "solver")


class LatentParadigm:
  """The frozen tokenizer and its latent grid; preprocess (VAE encode) and sample (sample_latents, decode)."""

  def __init__(self, cfg, tokenizer, tokenizer_params):
    self.cfg = cfg
    self.tokenizer, self.tokenizer_params = tokenizer, tokenizer_params
    self.grid = tuple(tokenizer.grid)
    self.token_dim = tokenizer.latent_dim
    self.num_classes = cfg.num_classes
    self.num_tokens = self.grid[0] * self.grid[1]

  def preprocess(self, batch):
    """Images -> scaled VAE latents [B, h, w, C] with the frozen tokenizer."""
    return dict(latent=self.tokenizer.encode(self.tokenizer_params, batch["image"]), label=batch["label"])

  @functools.partial(jax.jit, static_argnums=0, static_argnames=STATIC_OPTIONS)
  def sample(self, params, label_B, rng, *, temperature=1.0, top_k=0, top_p=1.0, **options):
    """Images [B, H, W, 3] in [-1, 1] for labels [B] (top_k / top_p are categorical-only and ignored)."""
    del top_k, top_p
    latent = self.sample_latents(params, label_B, rng, temperature=temperature, **options)
    return self.tokenizer.decode(self.tokenizer_params, latent)
