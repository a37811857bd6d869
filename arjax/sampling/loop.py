"""The one sampler skeleton: a typed state and a loop over AR units (token, scale, block, entity, frame).

Every iteration does forward -> guide -> head sample -> commit:
  feat, cache = steps.forward(params, state, unit)    # a network pass over state.feed (the guided batch)
  x = steps.sample(params, feat, scale, unit, rng)    # the head draws the unit's B rows; `scale` is the
                                                      # guidance scale at this unit (None: guidance off),
                                                      # applied to logits, or to velocities inside an ODE
  out, feed, done_B = steps.commit(state, x, unit)    # write the unit into the output, build the next feed
Rows whose `done_B` is set keep their output (per-row stop, e.g. at EOS). Consecutive units of equal size run
in one `lax.while_loop` (the unit index is traced there) that also stops once every row is done; a unit whose
size differs from its neighbours' (a VAR scale) is its own, unrolled step. With `Steps.fed_at_start` (each unit
writes its feed at cache slots [start, start + size), as next-token decoding does) and caches of at least
CHUNK_MIN_SLOTS slots, such a run is split into CHUNKS loops, each over the contiguous KV caches cut to the slots
its units can reach, so attention reads 5/8 of the slots on average instead of all of them (LlamaGen-B:
docs/inference_speed.md).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp

from arjax import cache as cache_lib
from arjax.nn import conv as conv_lib
from arjax.nn import quant
from arjax.sampling import guidance as guidance_lib

# Inference precision (arjax.nn.quant): params are cast once per call to `compute_dtype` ('auto': bf16 on
# accelerators and AMX CPUs, f32 on other CPUs; quant.auto_dtype) or their Dense kernels quantised to int8, KV
# caches are held in `cache_dtype` ('auto': f32 on CPU, else the compute dtype); logits, softmax and sampling
# stay f32.
PRECISION = dict(compute_dtype="auto", int8=False, int8_head=False, cache_dtype="auto")
CHUNKS = 4  # loops per run of equal units with fed_at_start (each traced and compiled on its own) ...
CHUNK_MIN_SLOTS = 256  # ... once a cache holds this many slots (shorter: attention is cheap, compile time is not)


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
  fed_at_start: bool = False  # unit k's forward writes cache slots [start, start + size) and no later ones


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
    is_kv = lambda x: isinstance(x, cache_lib.KVCache)
    floating = jnp.issubdtype(dtype, jnp.floating)
    cache = jax.tree.map(lambda c: cache_lib.astype(c, dtype) if is_kv(c) else quant.cast(c, dtype) if floating else c,
                         cache, is_leaf=is_kv)
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


def _resize_caches(cache, sizes):
  """The KVCaches of the pytree `cache`, in tree order, cut or padded to `sizes` slots (cache_lib.resize)."""
  is_kv = lambda x: isinstance(x, cache_lib.KVCache)
  sizes = iter(sizes)
  return jax.tree.map(lambda c: cache_lib.resize(c, next(sizes)) if is_kv(c) else c, cache, is_leaf=is_kv)


def chunks(first: int, count: int, parts: int) -> list[tuple[int, int]]:
  """[first, first + count) split into `parts` (at most `count`) consecutive (begin, end) ranges."""
  parts = max(1, min(parts, count))
  bounds = [first + count * j // parts for j in range(parts + 1)]
  return list(zip(bounds[:-1], bounds[1:]))


def run(steps: Steps, params, sizes, state: State, guidance: guidance_lib.Guidance) -> State:
  """Generates every unit of `sizes` (tokens per unit, in order)."""
  starts = [0]
  for s in sizes:
    starts.append(starts[-1] + int(s))
  denom = max(len(sizes) - 1, 1)
  full = jax.tree.leaves(state.cache, is_leaf=lambda x: isinstance(x, cache_lib.KVCache))
  full = [c.size for c in full if isinstance(c, cache_lib.KVCache)]  # the sizes to restore, in tree order
  cut = steps.fed_at_start and bool(full) and max(full) >= CHUNK_MIN_SLOTS
  for first, count, size in runs(sizes):
    if count == 1:
      state = step(steps, params, guidance, state, Unit(first, starts[first], size, first / denom))
      continue

    def body(carry, first=first, size=size):
      k, s = carry
      unit = Unit(k, starts[first] + (k - first) * size, size, k.astype(jnp.float32) / denom)
      return k + 1, step(steps, params, guidance, s, unit)

    for begin, end in chunks(first, count, CHUNKS if cut else 1):
      if cut:  # units before `end` wrote slots [0, starts[end]) at most
        state = state.replace(cache=_resize_caches(state.cache, [min(n, starts[end]) for n in full]))
      cond = lambda carry, end=end: (carry[0] < end) & ~jnp.all(carry[1].done_B)
      state = jax.lax.while_loop(cond, body, (jnp.asarray(begin, jnp.int32), state))[1]
    if cut:  # every cache back to its own size
      state = state.replace(cache=_resize_caches(state.cache, full))
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
      dtype, int8, int8_head = quant.dtype_of(opts.pop("compute_dtype")), opts.pop("int8"), opts.pop("int8_head")
      cache_dtype = quant.cache_dtype_of(opts.pop("cache_dtype"), dtype)
      if tokenizer_params is not None:  # an argument, not a closed-over constant (compile time)
        self = copy.copy(self)
        self.tokenizer_params = conv_lib.for_decoding(tokenizer_params, dtype, int8)
      with quant.compute(dtype, cache_dtype):
        return fn(self, quant.for_inference(params, dtype, int8, int8_head), cond, rng, opts)

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
