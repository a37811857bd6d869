"""The one training loop for tokenizers and paradigms: sharded, checkpointed, resumable."""
from __future__ import annotations

import json
import os
import signal
import time

import flax.linen as nn
from absl import logging as absl_logging
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from arjax import interfaces
from arjax import sharding
from arjax.data import pipeline
from arjax.eval import grid
from arjax.train import checkpoint as ckpt_lib
from arjax.train.optimizer import make_optimizer
from arjax.train.step import TrainState, make_train_step


class _Sigterm:
  """Turns SIGTERM into a flag the loop checks after each step (then it saves and returns)."""

  def __init__(self):
    self.received = False
    self._old = None

  def __enter__(self):
    self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, *_):
    self.received = True

  def __exit__(self, *_):
    signal.signal(signal.SIGTERM, self._old)


def init_state(model, config, mesh, example_batch, tx):
  """Builds the sharded TrainState in one jit (params and the optimizer moments that mirror them sharded by the
  logical-axis rules, scalars replicated), so every leaf is a global array on the mesh, also across processes."""
  rules = tuple(config.mesh.rules) if config.mesh.rules else sharding.DEFAULT_RULES
  rep = sharding.replicated(mesh)

  def boxed_init():
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    return model.init(init_rng, example_batch), state_rng

  def init():
    boxed, state_rng = boxed_init()
    params = nn.meta.unbox(boxed)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=jax.tree.map(jnp.copy, params), rng=state_rng)

  abstract = jax.eval_shape(boxed_init)[0]
  param_sh = sharding.param_shardings(abstract, mesh, rules)
  opt_sh = sharding.param_shardings(jax.eval_shape(tx.init, abstract), mesh, rules)  # boxes pass through optax
  return jax.jit(init, out_shardings=TrainState(step=rep, params=param_sh, opt_state=opt_sh, ema_params=param_sh,
                                                rng=rep))()


def state_shardings(state):
  return jax.tree.map(lambda x: x.sharding, state)


def _log(writer, step, metrics, path):
  metrics = {k: float(v) for k, v in metrics.items()}
  if jax.process_index() == 0:
    for k, v in metrics.items():
      writer.add_scalar(k, v, step)
    with open(path, "a") as f:
      f.write(json.dumps(dict(step=step, **metrics)) + "\n")
  return metrics


def train(config, workdir: str, model, evaluators=()):
  """Trains `model` (a Trainable) per `config`; resumes from workdir/checkpoints if present."""
  from tensorboardX import SummaryWriter
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh.shape)
  shard_index, shard_count = sharding.batch_shard(mesh)  # which rows of each global batch this process feeds
  ds = pipeline.make_dataset(config.data, split="train", seed=config.seed, process_index=shard_index,
                             process_count=shard_count)
  data_iter = iter(ds)
  preprocess = jax.jit(interfaces.optional(model, "preprocess") or (lambda b: b))
  first = preprocess(sharding.global_batch(next(iter(ds)), mesh))
  tx, lr_fn = make_optimizer(config.optim, config.train.steps)
  compute_dtype = jnp.dtype(config.train.compute_dtype)
  step_fn = make_train_step(model, tx, lr_fn, ema_decay=config.train.ema_decay,
                            compute_dtype=compute_dtype, grad_accum=config.train.grad_accum)
  with mesh:
    state = init_state(model, config, mesh, first, tx)
  sharding.barrier("arjax_train_init")
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.train.keep_checkpoints)
  if ckpt.latest_step() is not None:
    restored, data_state = ckpt.restore(jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state.as_dict()))
    state = TrainState(**restored)
    data_iter.set_state(data_state)
    print(f"resumed from {ckpt.directory} at step {int(state.step)}", flush=True)
  shardings = state_shardings(state)
  train_step = jax.jit(step_fn, in_shardings=(shardings, sharding.batch_sharding(mesh)),
                       out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  with mesh:
    train_step = train_step.lower(state, first).compile()  # compiled here, so that the barrier covers it
  sharding.barrier("arjax_train_compiled")
  maintain = interfaces.optional(model, "maintain")
  maintain = jax.jit(maintain, out_shardings=shardings.params) if maintain and config.train.maintain_every else None
  maintain_rng = jax.random.PRNGKey(config.seed + 1)
  writer = SummaryWriter(os.path.join(workdir, "tb")) if jax.process_index() == 0 else None
  start, total = int(state.step), config.train.steps
  bar = tqdm(range(start, total), initial=start, total=total,
             disable=not config.train.progress or jax.process_index() != 0,
             desc=os.path.basename(os.path.normpath(workdir)), dynamic_ncols=True)
  t0, metrics = time.time(), {}
  with _Sigterm() as sigterm, mesh:
    for step in bar:
      batch = preprocess(sharding.global_batch(next(data_iter), mesh))
      if maintain is not None and step % config.train.maintain_every == 0:
        state = state.replace(params=maintain(state.params, batch, jax.random.fold_in(maintain_rng, step)))
      state, metrics = train_step(state, batch)
      done = step + 1
      if done % config.train.log_every == 0 or done == total:
        m = _log(writer, done, dict(metrics, steps_per_s=(done - start) / (time.time() - t0)),
                 os.path.join(workdir, "metrics.jsonl"))
        bar.set_postfix({k: f"{v:.4g}" for k, v in m.items() if k in ("loss", "psnr", "token_acc", "lr")})
      if config.train.sample_every and done % config.train.sample_every == 0 and interfaces.is_paradigm(model):
        write_samples(model, state.ema_params, config, os.path.join(workdir, "samples", f"step{done}.png"))
      for ev in evaluators:
        if ev.every and done % ev.every == 0:
          _log(writer, done, {f"{ev.name}/{k}": v for k, v in ev.run(state.ema_params, state.rng, done).items()},
               os.path.join(workdir, "metrics.jsonl"))
      signalled = sharding.any_process(sigterm.received)  # every process saves and stops at the same step
      stop = signalled or done == config.train.stop_at_step
      if done % config.train.ckpt_every == 0 or done == total or stop:
        ckpt.save(done, state.as_dict(), data_iter.get_state(), force=stop)
      if stop:
        print(f"{'SIGTERM' if signalled else 'stop_at_step'}: saved step {done} to "
              f"{ckpt.directory}", flush=True)
        break
  ckpt.wait()
  if writer is not None:
    writer.close()
  return state, {k: float(v) for k, v in metrics.items()}


def sample_conds(model, config, n: int) -> dict:
  """The conditions of n sample images: the classes in turn, or the first n captions of the test split."""
  conditioner = model.conditioner
  if conditioner.kind == "class":
    return {"label": jnp.arange(n) % conditioner.num_classes}
  source = pipeline.make_source(config.data, "test", n)
  return {"caption": jnp.asarray(np.stack([pipeline.encode_caption(source[i]["caption"]) for i in range(n)]))}


def write_samples(model, params, config, path, cond=None):
  """Samples one image per condition (default: sample_conds) and writes a PNG grid (process 0 writes)."""
  from jax.experimental import multihost_utils
  cond = sample_conds(model, config, config.train.num_sample_images) if cond is None else cond
  images = model.sample(params, cond, jax.random.PRNGKey(config.seed + 1), **config.sample)
  sharding.barrier(f"arjax_samples_{path}")
  images = multihost_utils.process_allgather(images, tiled=True)  # the global array as numpy on every process
  if jax.process_index() == 0:
    grid.save_grid(images, path)
  return images
