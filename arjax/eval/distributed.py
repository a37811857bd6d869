"""Evaluation work split over hosts: each process handles a contiguous range of batches on its local
devices, then per-example outputs are gathered so every process holds all of them, in index order.

Batch b covers example indices [b * batch_size, (b + 1) * batch_size) and is computed from
fold_in(rng, b) by exactly one process, so the union over processes is the same set of examples
whatever the number of processes or devices.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def batch_range(num_batches: int, process_index: int, process_count: int) -> range:
  """The contiguous batch indices process `process_index` of `process_count` handles."""
  per = -(-num_batches // process_count)
  return range(min(process_index * per, num_batches), min((process_index + 1) * per, num_batches))


def local_mesh() -> Mesh:
  """A 1-D ('batch',) mesh over this process's devices."""
  return Mesh(np.asarray(jax.local_devices()), ("batch",))


def to_local(tree, mesh: Mesh | None = None):
  """Copies a pytree (possibly of multi-host global arrays) onto this process's devices, replicated."""
  mesh = mesh or local_mesh()

  def leaf(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = (np.asarray(x.addressable_data(0)) if x.is_fully_replicated
           else multihost_utils.process_allgather(x, tiled=True))
    return jax.device_put(x, NamedSharding(mesh, P()))

  return jax.tree.map(leaf, tree)


def shard_batch(tree, mesh: Mesh):
  """Puts a host batch on the local devices, split over the batch axis when it divides evenly."""
  def leaf(x):
    x = np.asarray(x)
    spec = P("batch") if x.ndim and x.shape[0] % mesh.size == 0 else P()
    return jax.device_put(x, NamedSharding(mesh, spec))
  return jax.tree.map(leaf, tree)


def gather(local: dict, count: int) -> dict:
  """Concatenates every process's per-example arrays (dict of [n_p, ...]) in process order -> [sum n_p, ...].

  Processes may hold different numbers of rows (at most `count`); rows are padded to `count` for the
  all-gather and the padding is dropped afterwards.
  """
  if jax.process_count() == 1:
    return local
  padded = {k: np.concatenate([v, np.zeros((count - len(v),) + v.shape[1:], v.dtype)]) for k, v in local.items()}
  n_local = next(iter(local.values())).shape[0]
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(n_local)))
  allv = multihost_utils.process_allgather(padded)
  return {k: np.concatenate([np.asarray(v[p, :sizes[p]]) for p in range(len(sizes))]) for k, v in allv.items()}


def map_batches(fn, num_examples: int, batch_size: int) -> dict:
  """Runs fn(b, indices) -> dict of per-example arrays for this process's batches; gathers all of them.

  Returns a dict of numpy arrays [num_examples, ...] (identical on every process, in index order).
  """
  if num_examples <= 0 or batch_size <= 0:
    raise ValueError(f"num_examples={num_examples}, batch_size={batch_size}: expected both > 0")
  num_batches = -(-num_examples // batch_size)
  mine = batch_range(num_batches, jax.process_index(), jax.process_count())
  outs = []
  for b in mine or [0]:  # a process without batches computes one to give the all-gather its structure
    idx = np.arange(b * batch_size, min((b + 1) * batch_size, num_examples))
    outs.append({k: np.asarray(v)[:len(idx) if mine else 0] for k, v in fn(b, idx).items()})
  local = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
  per_process = -(-num_batches // jax.process_count()) * batch_size
  return gather(local, per_process)
