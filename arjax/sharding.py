"""Device meshes, logical-axis rules and host-local -> global arrays."""
from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# logical axis -> mesh axis; parameters are sharded FSDP-style over 'embed', tensor-parallel over
# 'mlp' / 'heads' / 'vocab'.
DEFAULT_RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"),
                 ("heads", "tensor"), ("vocab", "tensor"), ("kv", None))


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


def global_batch(local_batch, mesh: Mesh):
  """Host-local numpy batch (this process's shard) -> global jax arrays sharded over the batch."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)
