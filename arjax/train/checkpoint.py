"""Orbax checkpoints: train state (params, optimizer, EMA, step, RNG) and the data iterator state,
saved together in one atomic step directory."""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint directory is missing, empty or unreadable (nothing is deleted)."""


class Checkpointer:
  """Saves/restores {'state': train state dict, 'data': iterator state} under `directory`."""

  def __init__(self, directory: str, max_to_keep: int = 3, create: bool = True):
    self.directory = os.path.abspath(directory)
    if not create and not os.path.isdir(self.directory):
      raise CheckpointError(f"checkpoint directory {self.directory} does not exist")
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create),
        item_handlers=dict(state=ocp.StandardCheckpointHandler(), data=ocp.JsonCheckpointHandler()))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state: dict, data_state=None, force: bool = False):
    args = dict(state=ocp.args.StandardSave(state))
    if data_state is not None:
      args["data"] = ocp.args.JsonSave(data_state)
    self.manager.save(int(step), args=ocp.args.Composite(**args), force=force)

  def wait(self):
    self.manager.wait_until_finished()

  def restore(self, abstract_state=None, step=None, with_data: bool = True):
    """(state, data_state) at `step` (default latest); abstract_state gives structure and shardings (default:
    every array whole on this process's first device, whatever mesh or process count saved it)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint found in {self.directory}")
    try:
      if abstract_state is None:
        local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract_state = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local),
                                      self.manager.item_metadata(step)["state"])
      args = dict(state=ocp.args.StandardRestore(abstract_state))
      if with_data:
        args["data"] = ocp.args.JsonRestore()
      out = self.manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # orbax raises many types for truncated / foreign directories
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} is unreadable ({type(e).__name__}: "
          f"{str(e)[:300]}); nothing was deleted — move it aside or restore an earlier step") from e
    return out["state"], (out["data"] if with_data else None)


def load_params(directory: str, ema: bool = True):
  """Params (EMA by default) from the latest checkpoint in `directory` (e.g. a trained tokenizer)."""
  ckpt = Checkpointer(directory, create=False)
  state, _ = ckpt.restore(with_data=False)
  return jax.tree.map(jax.numpy.asarray, state["ema_params" if ema else "params"])
