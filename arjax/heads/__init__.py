"""Heads: small networks that turn a backbone feature into a distribution over one continuous token.

Every head (an arjax.interfaces.Head) has init(rng, z_ND), loss(params, z_ND, x_NC, rng) -> per-row loss [N] and
sample(params, z_ND, rng, *, guide_scale=None, steps=None, temperature=1.0, solver=None) -> [N, C]: with
guide_scale, z_ND holds the [cond ; uncond] rows [2N, D] of a guided pass and every solver step guides the
prediction (velocity / noise) with guidance.combine.
"""
from __future__ import annotations

HEAD_KEYS = ("kind", "width", "depth", "steps", "steps_end", "solver", "sde_scale", "batch_mul", "train_steps",
             "clip_x0", "prediction", "heads", "order")


def build(token_dim: int, cfg, tokenizer=None, tokenizer_params=None):
  """The head named by cfg.kind: 'flow' (flow matching), 'diffusion' (MAR-style DDPM) or 'dimwise' (TokenBridge's
  per-dimension AR head; it takes its grid and data-derived channel order from the dimwise tokenizer)."""
  from arjax import config as config_lib
  config_lib.check_keys(cfg, HEAD_KEYS, "model.head")
  if cfg.kind == "flow":
    from arjax.heads.flow_matching import FlowMatchingHead
    return FlowMatchingHead(token_dim, cfg)
  if cfg.kind == "diffusion":
    from arjax.heads.diffusion import DiffusionHead
    return DiffusionHead(token_dim, cfg)
  if cfg.kind == "dimwise":
    from arjax.heads import dimwise
    return dimwise.build(token_dim, cfg, tokenizer, tokenizer_params)
  raise ValueError(f"model.head.kind must be 'flow', 'diffusion' or 'dimwise', got {cfg.kind!r}")


def rows(z_ND, guide_scale) -> int:
  """Rows a head samples for features z_ND (half of them under guidance)."""
  return z_ND.shape[0] // (1 if guide_scale is None else 2)
