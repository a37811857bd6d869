"""The written contract between the trainer / evaluators / CLIs and what they train and sample.

Three protocols:
  * Tokenizer: a Trainable that maps images to tokens and back (`kind`: discrete | continuous | bytes).
  * Head: maps backbone features [N, D] to a distribution over one unit's values (categorical, flow, ...).
  * Paradigm: a Trainable with a frozen tokenizer that samples images from a condition pytree `cond`
    ({'label': [B]}, {'caption': [B, Lc]}, prompt frames, known tokens, ...).
Optional members (`nll`, `maintain`, `stream`, `preprocess`) are declared in OPTIONAL and looked up in one place,
`optional(model, name)`.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

OPTIONAL = ("preprocess", "maintain", "nll", "stream")


@runtime_checkable
class Trainable(Protocol):
  """What the trainer needs: params from init, (loss, metrics) from a batch."""

  def init(self, rng, batch_or_none) -> Any: ...

  def loss(self, params, batch, rng, train: bool = True) -> tuple[Any, dict]: ...

  # optional: preprocess(batch) -> batch (jitted once per step, e.g. encode with a frozen tokenizer)
  # optional: maintain(params, batch, rng) -> params (e.g. dead-code restarts), every train.maintain_every


@runtime_checkable
class Tokenizer(Trainable, Protocol):
  kind: str  # 'discrete' | 'continuous' | 'bytes'
  grid: tuple

  def encode(self, params, images_BHW3) -> Any: ...

  def decode(self, params, tokens) -> Any: ...


@runtime_checkable
class Head(Protocol):
  """loss: per-row loss [N]; sample: guide_scale=None is unguided, else z is [cond ; uncond] rows [2N, D]."""

  def init(self, rng, z_ND) -> Any: ...

  def loss(self, params, z_ND, x_N, rng) -> Any: ...

  def sample(self, params, z_ND, rng, *, guide_scale=None, temperature=1.0, **opts) -> Any: ...


@runtime_checkable
class Paradigm(Trainable, Protocol):
  """A paradigm also has `conditioner` (arjax.conditioning.Conditioner) and `num_classes`."""

  def preprocess(self, batch) -> dict: ...

  def sample(self, params, cond, rng, **opts) -> Any: ...

  # optional: nll(params, batch) -> per-example NLL [B] (nats); stream(...) for streaming generators


def optional(model, name: str):
  """The bound optional member `name` of `model`, or None if the model does not provide it."""
  if name not in OPTIONAL:
    raise ValueError(f"{name!r} is not an optional member of the contract {OPTIONAL}")
  return getattr(model, name, None)


def is_paradigm(model) -> bool:
  """Whether `model` samples images from conditions (a Paradigm), as opposed to a tokenizer."""
  return isinstance(model, Paradigm)
