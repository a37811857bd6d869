"""Heads: small networks that turn a backbone feature into a distribution over one continuous token.

Every head (an arjax.interfaces.Head) has init(rng, z_ND), loss(params, z_ND, x_NC, rng) -> per-row loss [N] and
sample(params, z_ND, rng, *, guide_scale=None, steps=None, temperature=1.0, solver=None) -> [N, C]: with
guide_scale, z_ND holds the [cond ; uncond] rows [2N, D] of a guided pass and every solver step guides the
prediction (velocity / noise) with guidance.combine.
"""
from __future__ import annotations

HEAD_KEYS = ("kind", "width", "depth", "steps", "steps_end", "solver", "sde_scale", "batch_mul", "train_steps",
             "clip_x0")


def build(token_dim: int, cfg):
  """The head named by cfg.kind: 'flow' (flow matching) or 'diffusion' (MAR-style DDPM)."""
  from arjax import config as config_lib
  config_lib.check_keys(cfg, HEAD_KEYS, "model.head")
  if cfg.kind == "flow":
    from arjax.heads.flow_matching import FlowMatchingHead
    return FlowMatchingHead(token_dim, cfg)
  if cfg.kind == "diffusion":
    from arjax.heads.diffusion import DiffusionHead
    return DiffusionHead(token_dim, cfg)
  raise ValueError(f"model.head.kind must be 'flow' or 'diffusion', got {cfg.kind!r}")


def rows(z_ND, guide_scale) -> int:
  """Rows a head samples for features z_ND (half of them under guidance)."""
  return z_ND.shape[0] // (1 if guide_scale is None else 2)
