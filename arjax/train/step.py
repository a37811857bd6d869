"""The pure train step: gradient accumulation over micro-batches, bf16 compute, EMA."""
from __future__ import annotations

import inspect

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
  """(state, batch) -> (state, metrics); the batch is split into `grad_accum` micro-batches. A model whose
  `loss` has a `step` parameter (a schedule inside the loss, e.g. a mask-rate warm-up) gets the step."""
  takes_step = "step" in inspect.signature(model.loss).parameters

  def loss_fn(params, batch, rng, step):
    kw = dict(step=step) if takes_step else {}
    loss, metrics = model.loss(cast_floating(params, compute_dtype), batch, rng, train=True, **kw)
    loss = loss.astype(jnp.float32)
    return loss, dict(metrics, loss=loss)

  def grads_and_metrics(params, batch, rng, step):
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng, step)
    return grads, metrics

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum == 1:  # no loop: XLA:CPU runs convolutions inside a scan body far slower
      grads, metrics = grads_and_metrics(state.params, batch, rng, state.step)
    else:
      micro = jax.tree.map(lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)

      def accumulate(carry, inputs):
        i, mb = inputs
        micro_out = grads_and_metrics(state.params, mb, jax.random.fold_in(rng, i), state.step)
        return jax.tree.map(jnp.add, carry, micro_out), None

      zeros = jax.eval_shape(grads_and_metrics, state.params, jax.tree.map(lambda x: x[0], micro), rng,
                             state.step)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
      (grads, metrics), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum), micro))
      grads, metrics = jax.tree.map(lambda g: g / grad_accum, (grads, metrics))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state.ema_params, params)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads), lr=lr_fn(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema), metrics

  return train_step
