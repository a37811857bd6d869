"""The pure train step: gradient accumulation over micro-batches, bf16 compute, EMA."""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax

from arjax.nn.layers import cast_floating


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  ema_params: dict
  rng: jax.Array

  def as_dict(self):
    return dict(step=self.step, params=self.params, opt_state=self.opt_state,
                ema_params=self.ema_params, rng=self.rng)


def make_train_step(model, tx, lr_fn, *, ema_decay: float, compute_dtype=jnp.float32, grad_accum: int = 1):
  """(state, batch) -> (state, metrics); the batch is split into `grad_accum` micro-batches."""

  def loss_fn(params, batch, rng):
    loss, metrics = model.loss(cast_floating(params, compute_dtype), batch, rng, train=True)
    loss = loss.astype(jnp.float32)
    return loss, dict(metrics, loss=loss)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    micro = jax.tree.map(lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)

    def accumulate(carry, inputs):
      i, mb = inputs
      (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state.params, mb, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (grads, metrics)), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    _, metric_shapes = jax.eval_shape(loss_fn, state.params, jax.tree.map(lambda x: x[0], micro), rng)
    zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), metric_shapes)
    (grads, metrics), _ = jax.lax.scan(accumulate, (zeros, zeros_m), (jnp.arange(grad_accum), micro))
    grads = jax.tree.map(lambda g: g / grad_accum, grads)
    metrics = jax.tree.map(lambda m: m / grad_accum, metrics)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state.ema_params, params)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads), lr=lr_fn(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema), metrics

  return train_step
