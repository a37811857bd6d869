"""optax AdamW with warmup + cosine/constant schedule, clipping and a weight-decay mask."""
from __future__ import annotations

import jax
import optax


def schedule(cfg, total_steps: int):
  """Linear warmup to cfg.lr, then 'cosine' decay to cfg.lr * cfg.final_lr_frac, or 'constant'."""
  warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
  if cfg.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, max(warmup, 1)),
                                 optax.constant_schedule(cfg.lr)], [warmup])
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(warmup, 1), max(total_steps, warmup + 1),
                                              end_value=cfg.lr * cfg.final_lr_frac)
  raise ValueError(f"optim.schedule must be 'cosine' or 'constant', got {cfg.schedule!r}")


def decay_mask(params):
  """Weight decay on matrices and conv kernels only (not biases, norms' scales)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg, total_steps: int):
  """The optimizer and its learning-rate schedule."""
  lr = schedule(cfg, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.clip) if cfg.clip > 0 else optax.identity(),
      optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask))
  return tx, lr
