"""The sampler skeleton: units in order with the right starts/progress, while_loop == unrolled, per-row done,
chunked runs over cut KV caches."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax import cache as cache_lib
from arjax.nn import quant
from arjax.sampling import guidance, loop


def toy_steps(stop_at_B):
  """out[b, start:start+size] = unit index + 1 (from the feed); row b is done after unit stop_at_B[b]."""

  def forward(params, state, unit):
    return state.feed * 0 + unit.index + 1, state.cache

  def sample(params, feat, scale, unit, rng):
    x = jnp.broadcast_to(feat[:, None], (feat.shape[0], unit.size)).astype(jnp.float32)
    return x if scale is None else x * scale  # guided rows: feat has 2B rows of which the first B are kept

  def commit(state, x, unit):
    b = state.done_B.shape[0]
    out = jax.lax.dynamic_update_slice_in_dim(state.out, x[:b], unit.start, axis=1)
    progress = state.cache.at[:, unit.index].set(unit.progress)
    return out, state.feed, (unit.index >= stop_at_B), progress

  return forward, sample, commit


def run(sizes, stop_at_B, scale=1.0):
  forward, sample, commit = toy_steps(stop_at_B)
  b = stop_at_B.shape[0]

  def commit_with_progress(state, x, unit):
    out, feed, done, progress = commit(state, x, unit)
    return out, feed, done

  def forward_recording(params, state, unit):
    feat, cache = forward(params, state, unit)
    return feat, cache.at[:, unit.index].set(unit.progress)

  state = loop.init_state(jnp.zeros((b, sum(sizes))), jnp.zeros((b * (2 if scale != 1 else 1),)),
                          jnp.zeros((b, len(sizes))), b, jax.random.PRNGKey(0))
  steps = loop.Steps(forward_recording, sample, commit_with_progress)
  out = jax.jit(lambda s: loop.run(steps, None, sizes, s, guidance.Guidance(scale)))(state)
  return np.asarray(out.out), np.asarray(out.cache), np.asarray(out.done_B)


def test_runs_group_equal_sizes():
  assert loop.runs((1, 4, 4, 4, 16, 1)) == [(0, 1, 1), (1, 3, 4), (4, 1, 16), (5, 1, 1)]


@pytest.mark.parametrize("sizes", [(2, 2, 2, 2), (1, 3, 3, 5), (4,)])
def test_units_fill_in_order_with_progress(sizes):
  out, progress, done = run(sizes, jnp.array([99, 99]))
  want = np.repeat(np.arange(1, len(sizes) + 1), sizes).astype(np.float32)
  np.testing.assert_array_equal(out, np.stack([want, want]))
  np.testing.assert_allclose(progress[0], np.arange(len(sizes)) / max(len(sizes) - 1, 1), rtol=1e-6)
  assert not done.any()


def test_per_row_done_keeps_finished_rows_and_stops_the_loop():
  out, progress, done = run((2,) * 5, jnp.array([1, 3]))
  # row 0 finished at unit 1: units 2.. keep zeros; row 1 at unit 3
  np.testing.assert_array_equal(out[0], [1, 1, 2, 2, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(out[1], [1, 1, 2, 2, 3, 3, 4, 4, 0, 0])
  assert done.all()
  assert progress[0, 4] == 0  # the while_loop stopped before unit 4: every row was done


def test_guidance_scale_reaches_the_head_and_options_are_checked():
  out, _, _ = run((1, 1), jnp.array([9]), scale=3.0)
  np.testing.assert_array_equal(out[0], [3.0, 6.0])  # constant schedule: scale 3 at every unit
  with pytest.raises(ValueError, match="unknown sampling option"):
    loop.options(dict(topk=3))
  assert loop.options(dict(top_k=3), dict(steps=None)) == dict(guidance.DEFAULTS, **loop.PRECISION, top_k=3, steps=None)


def test_fed_at_start_runs_chunks_over_cut_caches_and_restores_them(monkeypatch):
  """A run of equal units with fed_at_start: CHUNKS loops, each seeing the KV cache cut to the slots its units can
  reach (starts[end]); a unit of another size, and the result, get the cache at its full size again. A ring is
  never cut. The feed writes token k at slot k, so the cache's pos_BS comes back as for one uncut loop."""
  monkeypatch.setattr(loop, "CHUNK_MIN_SLOTS", 13)  # the contiguous cache's 13 slots: chunked
  sizes = (1,) * 10 + (3,)
  seen = []

  def forward(params, state, unit):
    kv, ring = state.cache
    seen.append((int(unit.size), kv.size, ring.size))  # static: recorded once per traced loop body / step
    idx_BL = cache_lib.query_indices(kv, unit.size)
    kv = cache_lib.advance(kv, kv.k, kv.v, unit.size)
    return (idx_BL[:, 0] == unit.start).astype(jnp.float32), (kv, cache_lib.advance(ring, ring.k, ring.v, unit.size))

  def sample(params, feat, scale, unit, rng):
    return jnp.broadcast_to(feat[:, None], (feat.shape[0], unit.size))

  def commit(state, x, unit):
    return jax.lax.dynamic_update_slice_in_dim(state.out, x, unit.start, axis=1), state.feed, state.done_B

  kv = cache_lib.init(1, 2, 13, 1, 4)
  ring = cache_lib.init(1, 2, 64, 1, 4, window=4, sink=1)
  state = loop.init_state(jnp.zeros((2, 13)), None, (kv, ring), 2, jax.random.PRNGKey(0))
  out = loop.run(loop.Steps(forward, sample, commit, fed_at_start=True), None, sizes, state, guidance.Guidance(1.0))
  assert loop.chunks(0, 10, loop.CHUNKS) == [(0, 2), (2, 5), (5, 7), (7, 10)]
  assert seen == [(1, 2, 5), (1, 5, 5), (1, 7, 5), (1, 10, 5), (3, 13, 5)]
  np.testing.assert_array_equal(out.out, 1.0)  # every unit saw end_B == its start
  kv_out, ring_out = out.cache
  assert kv_out.size == 13 and ring_out.size == 5
  np.testing.assert_array_equal(kv_out.pos_BS, np.broadcast_to(np.arange(13), (2, 13)))
  monkeypatch.setattr(loop, "CHUNK_MIN_SLOTS", 14)  # one slot more than the cache has: one uncut loop
  seen.clear()
  loop.run(loop.Steps(forward, sample, commit, fed_at_start=True), None, sizes, state, guidance.Guidance(1.0))
  assert seen == [(1, 13, 5), (3, 13, 5)]


class _Params:
  """A paradigm stand-in for `loop.sampler`: its sampler returns the params it is given."""
  sample = loop.sampler()(lambda self, params, cond, rng, opts: params)


@pytest.mark.parametrize("int8,int8_head,head_int8", [(False, False, False), (True, False, False), (True, True, True),
                                                      (False, True, False)])
def test_sampler_prepares_params_per_precision_options(int8, int8_head, head_int8):
  """The sampler's params: int8 quantises the large Dense kernels but the logits head, int8_head the head too
  (ignored without int8); the rest in compute_dtype."""
  w = jax.random.normal(jax.random.PRNGKey(0), (64, 128))
  params = {"head": {"kernel": w}, "block": {"up": {"kernel": w}, "norm": {"scale": jnp.ones(64)}}}
  got = _Params().sample(params, None, jax.random.PRNGKey(0), compute_dtype="bfloat16", int8=int8,
                         int8_head=int8_head)
  assert isinstance(got["block"]["up"]["kernel"], quant.Int8) == int8
  assert isinstance(got["head"]["kernel"], quant.Int8) == head_int8
  assert got["block"]["norm"]["scale"].dtype == jnp.bfloat16
  if not head_int8:
    assert got["head"]["kernel"].dtype == jnp.bfloat16
