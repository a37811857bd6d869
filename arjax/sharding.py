"""Multi-process start-up, device meshes, logical-axis rules and host-local -> global arrays."""
from __future__ import annotations

import os

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# logical axis -> mesh axis; parameters are sharded FSDP-style over 'embed', tensor-parallel over
# 'mlp' / 'heads' / 'vocab'.
DEFAULT_RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"),
                 ("heads", "tensor"), ("vocab", "tensor"), ("kv", None))


def init_distributed(coordinator=None, num_processes=None, process_id=None) -> bool:
  """jax.distributed.initialize for a multi-process launch; True if it ran. Call before any other JAX op.

  Unset arguments come from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; without a coordinator
  and with at most one process this is a no-op (single-process training).
  """
  env = os.environ
  coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
  try:
    num_processes = int(env.get("JAX_NUM_PROCESSES", 1)) if num_processes is None else num_processes
    process_id = int(env["JAX_PROCESS_ID"]) if process_id is None and "JAX_PROCESS_ID" in env else process_id
  except ValueError as e:
    raise ValueError(f"JAX_NUM_PROCESSES / JAX_PROCESS_ID must be integers ({e})") from None
  if coordinator is None and num_processes <= 1:
    return False
  if coordinator is None or process_id is None or not 0 <= process_id < num_processes:
    raise ValueError(f"a multi-process launch needs --coordinator=HOST:PORT, --num_processes=N and "
                     f"--process_id=I with 0 <= I < N (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / "
                     f"JAX_PROCESS_ID); got coordinator={coordinator!r}, num_processes={num_processes}, "
                     f"process_id={process_id}")
  jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
  return True


def make_mesh(shape=(-1, 1, 1), devices=None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh; one -1 in shape takes the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) != 3 or shape.count(-1) > 1:
    raise ValueError(f"mesh.shape must have 3 entries with at most one -1, got {tuple(shape)}")
  if -1 in shape:
    rest = int(np.prod([s for s in shape if s != -1]))
    shape[shape.index(-1)] = len(devices) // rest
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh.shape {tuple(shape)} needs {int(np.prod(shape))} devices, have {len(devices)}")
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def _fit(spec: P, shape, mesh: Mesh) -> P:
  """Drops mesh axes from dims they do not divide (small layers stay replicated)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    out.append(axes if size > 1 and dim % size == 0 else None)
  return P(*out)


def param_shardings(abstract_params, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for a (possibly nn.Partitioned-boxed) abstract param tree, unboxed structure."""
  specs = nn.get_partition_spec(abstract_params)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  unboxed = nn.meta.unbox(abstract_params)
  return jax.tree.map(lambda x, s: NamedSharding(mesh, _fit(s, x.shape, mesh)), unboxed, mesh_specs,
                      is_leaf=lambda s: isinstance(s, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_shard(mesh: Mesh) -> tuple[int, int]:
  """(index, count): this process holds rows [index, index + 1) * B / count of every global batch of B rows."""
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  rows = sorted({s[0].start or 0 for s in batch_sharding(mesh).addressable_devices_indices_map((n,)).values()})
  if rows != list(range(rows[0], rows[0] + len(rows))) or rows[0] % len(rows):
    raise ValueError(f"this process's devices hold batch shards {rows} of {n}, not one aligned contiguous block; "
                     f"order the mesh devices by process")
  return rows[0] // len(rows), n // len(rows)


def barrier(name: str, timeout_s: int = 1800):
  """Waits until every process reaches barrier `name` (a no-op for one process). CPU collectives (gloo) give up
  after 30 s, so call it before the first collective that follows work whose length differs between processes
  (compiles: only process 0 uses the persistent compilation cache)."""
  if jax.process_count() > 1:
    from orbax.checkpoint import multihost
    multihost.get_jax_distributed_client().wait_at_barrier(name, timeout_s * 1000)


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any (so all processes take the same branch)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(multihost_utils.process_allgather(np.asarray(flag)).any())


def global_batch(local_batch, mesh: Mesh):
  """Host-local numpy batch (this process's shard) -> global jax arrays sharded over the batch."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)
