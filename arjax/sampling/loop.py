"""The one sampler skeleton: a typed state and a loop over AR units (token, scale, block, entity, frame).

Every iteration does forward -> guide -> head sample -> commit:
  feat, cache = steps.forward(params, state, unit)    # a network pass over state.feed (the guided batch)
  x = steps.sample(params, feat, scale, unit, rng)    # the head draws the unit's B rows; `scale` is the
                                                      # guidance scale at this unit (None: guidance off),
                                                      # applied to logits, or to velocities inside an ODE
  out, feed, done_B = steps.commit(state, x, unit)    # write the unit into the output, build the next feed
Rows whose `done_B` is set keep their output (per-row stop, e.g. at EOS). Consecutive units of equal size run
in one `lax.while_loop` (the unit index is traced there) that also stops once every row is done; a unit whose
size differs from its neighbours' (a VAR scale) is its own, unrolled step.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp

from arjax.nn import quant
from arjax.sampling import guidance as guidance_lib

# Inference precision (arjax.nn.quant): params are cast once per call (or their Dense kernels quantised to int8),
# KV caches are held in `cache_dtype` ('auto': f32 on CPU, else the compute dtype); logits, softmax and sampling
# stay f32.
PRECISION = dict(compute_dtype="bfloat16", int8=False, cache_dtype="auto")


@flax.struct.dataclass
class State:
  out: Any             # the paradigm's output buffer, leaves [B, ...]
  feed: Any            # what the next forward pass consumes (start tokens, the previous unit, ...)
  cache: Any           # the model's KV cache (or None)
  done_B: jax.Array    # bool [B]
  rng: jax.Array


@dataclasses.dataclass(frozen=True)
class Unit:
  """One AR step: index, first sequence index, static size and progress in [0, 1] (index/start/progress may
  be traced)."""
  index: Any
  start: Any
  size: int
  progress: Any


class Steps(NamedTuple):
  """What a paradigm gives the skeleton (bind per-call options with functools.partial)."""
  forward: Callable  # (params, state, unit) -> (feat, cache)
  sample: Callable   # (params, feat, scale, unit, rng) -> x
  commit: Callable   # (state, x, unit) -> (out, feed, done_B)


def runs(sizes):
  """Maximal runs of consecutive equal sizes: [(first unit, count, size)]."""
  out = []
  for k, s in enumerate(sizes):
    if out and out[-1][2] == s:
      out[-1] = (out[-1][0], out[-1][1] + 1, s)
    else:
      out.append((k, 1, int(s)))
  return out


def init_state(out, feed, cache, batch: int, rng) -> State:
  """The loop's first state; inside a `sampler` the cache is cast to its `cache_dtype`."""
  dtype = quant.current_cache()
  if dtype is not None and cache is not None:
    cache = quant.cast(cache, dtype)
  return State(out=out, feed=feed, cache=cache, done_B=jnp.zeros((batch,), bool), rng=rng)


def step(steps: Steps, params, guidance: guidance_lib.Guidance, state: State, unit: Unit) -> State:
  """One AR unit: forward -> guide -> head sample -> commit (rows already done keep their output)."""
  rng, key = jax.random.split(state.rng)
  feat, cache = steps.forward(params, state, unit)
  x = steps.sample(params, feat, guidance.at(unit.progress) if guidance.on else None, unit, key)
  out, feed, done_B = steps.commit(state, x, unit)
  keep = lambda new, old: jnp.where(state.done_B.reshape((-1,) + (1,) * (new.ndim - 1)), old, new)
  out = jax.tree.map(keep, out, state.out)
  return State(out=out, feed=feed, cache=cache, done_B=state.done_B | done_B, rng=rng)


def run(steps: Steps, params, sizes, state: State, guidance: guidance_lib.Guidance) -> State:
  """Generates every unit of `sizes` (tokens per unit, in order)."""
  starts = [0]
  for s in sizes[:-1]:
    starts.append(starts[-1] + int(s))
  denom = max(len(sizes) - 1, 1)
  for first, count, size in runs(sizes):
    if count == 1:
      state = step(steps, params, guidance, state, Unit(first, starts[first], size, first / denom))
      continue

    def body(carry, first=first, size=size):
      k, s = carry
      unit = Unit(k, starts[first] + (k - first) * size, size, k.astype(jnp.float32) / denom)
      return k + 1, step(steps, params, guidance, s, unit)

    def cond(carry, end=first + count):
      k, s = carry
      return (k < end) & ~jnp.all(s.done_B)

    state = jax.lax.while_loop(cond, body, (jnp.asarray(first, jnp.int32), state))[1]
  return state


def options(opts: dict, extra: dict | None = None) -> dict:
  """Sampling options over the one set of defaults (plus a paradigm's own); an unknown name is an error."""
  allowed = dict(guidance_lib.DEFAULTS, **PRECISION, **(extra or {}))
  unknown = sorted(set(opts) - set(allowed))
  if unknown:
    raise ValueError(f"unknown sampling option(s) {unknown}; this paradigm takes {sorted(allowed)}")
  return dict(allowed, **opts)


def sampler(extra: dict | None = None):
  """Decorates `fn(self, params, cond, rng, opts) -> images` into a jitted `sample(params, cond, rng, **opts)`:
  options are checked against the defaults (+ `extra`), temperature is traced, the others are static; params
  run in `compute_dtype` (int8 Dense kernels with `int8`), caches in `cache_dtype`; `fn` does not see those three
  options."""

  def wrap(fn):
    @functools.partial(jax.jit, static_argnums=(0, 5))
    def jitted(self, params, tokenizer_params, cond, rng, static_items, temperature):
      opts = dict(static_items, temperature=temperature)
      dtype, int8 = quant.dtype_of(opts.pop("compute_dtype")), opts.pop("int8")
      cache_dtype = quant.cache_dtype_of(opts.pop("cache_dtype"), dtype)
      if tokenizer_params is not None:  # an argument, not a closed-over constant (compile time)
        self = copy.copy(self)
        self.tokenizer_params = quant.for_decoding(tokenizer_params, dtype)
      with quant.compute(dtype, cache_dtype):
        return fn(self, quant.for_inference(params, dtype, int8), cond, rng, opts)

    @functools.wraps(fn)
    def sample(self, params, cond, rng, **opts):
      o = options(opts, extra)
      temperature = o.pop("temperature")
      return jitted(self, params, getattr(self, "tokenizer_params", None), cond, rng, tuple(sorted(o.items())),
                    temperature)

    return sample

  return wrap


def guidance(opts: dict) -> guidance_lib.Guidance:
  return guidance_lib.Guidance(float(opts["cfg_scale"]), opts["cfg_schedule"])
