"""next_frame (LongLive): ring + sink streaming equals a full forward under window_sink; re-cache equals a fresh
prefill of the kept frames (and without it the stream still depends on the old prompt); KV bytes stop growing;
10x the clip length streams; both training modes give finite losses, long tuning sends no gradient into the
detached cache; bad input is a ValueError."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax import cache as cache_lib
from arjax import config as config_lib
from arjax import masks
from arjax import registry

CONFIG = "configs/moving_shapes/longlive.py:smoke"


def build(**model):
  cfg = config_lib.load_config(CONFIG)
  cfg.model.update(model)
  return registry.build_model(cfg)


@pytest.fixture(scope="module")
def model():
  return build(window=2, sink=1)


@pytest.fixture(scope="module")
def params(model):
  """Random params with every weight perturbed (the zero-initialised output layer included)."""
  p = model.init(jax.random.PRNGKey(0), None)
  leaves, tree = jax.tree.flatten(p)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def frames(model, n, b=2, seed=3):
  return jax.random.normal(jax.random.PRNGKey(seed), (b, n, model.tpf, model.token_dim))


def test_ring_stream_equals_full_forward_under_window_sink(model, params):
  n = 3 * (model.window + model.sink) + 1  # >= 3x the window
  x_BNLC = frames(model, n)
  labels_BN = jnp.asarray([[1] * n, [5] * n])
  state = model.empty_state(2).replace(labels_B=labels_BN[:, 0])
  write, commit = jax.jit(model.write), jax.jit(model.commit)
  streamed = []
  for k in range(n):
    streamed.append(write(params, state.cache, x_BNLC[:, k], state.labels_B, k)[0])
    state = commit(params, state, x_BNLC[:, k], k)
  assert state.cache.size == (model.sink + model.window) * model.tpf  # the ring never grew
  flat = x_BNLC.reshape(2, n * model.tpf, -1)
  full, _ = model.net.apply({"params": params}, flat, labels_BN, jnp.ones(flat.shape[:2]),
                            masks.window_sink(model.tpf, model.window, model.sink), model.positions(0, n))
  np.testing.assert_allclose(jnp.concatenate(streamed, 1), full, atol=2e-5)
  # the denoiser of frame n (noised, t = 0.3) over the ring == the last frame of the full forward
  xt = frames(model, 1, seed=9)[:, 0]
  v = model.velocity(params, state.cache, xt, state.labels_B, jnp.full(xt.shape[:2], 0.3), n)
  seq = jnp.concatenate([flat, xt], 1)
  t = jnp.concatenate([jnp.ones(flat.shape[:2]), jnp.full(xt.shape[:2], 0.3)], 1)
  ref, _ = model.net.apply({"params": params}, seq, jnp.concatenate([labels_BN, labels_BN[:, :1]], 1), t,
                           masks.window_sink(model.tpf, model.window, model.sink), model.positions(0, n + 1))
  np.testing.assert_allclose(v, ref[:, -model.tpf:], atol=2e-5)


def streamed_state(model, params, n, label):
  x = frames(model, n)
  state = model.empty_state(2).replace(labels_B=jnp.full((2,), label, jnp.int32))
  commit = jax.jit(model.commit)
  for k in range(n):
    state = commit(params, state, x[:, k], k)
  return state, x


def test_switch_recache_equals_fresh_prefill_of_kept_frames(model, params):
  n, new = 7, jnp.asarray([4, 6])
  state, x = streamed_state(model, params, n, 2)
  recache = jax.jit(model.recache)
  after = recache(params, state, new, n)
  kept = list(range(model.sink)) + list(range(n - model.window, n))
  # reference: one prefill of the kept frames (absolute RoPE frames) into a contiguous cache, frame-causal
  fresh = model.tcfg.init_cache(2, len(kept) * model.tpf)
  seq = x[:, np.asarray(kept)].reshape(2, len(kept) * model.tpf, -1)
  pos = jnp.concatenate([model.positions(f, 1) for f in kept])
  _, fresh = model.net.apply({"params": params}, seq, jnp.repeat(new[:, None], len(kept), 1), jnp.ones(seq.shape[:2]),
                             masks.block_causal([model.tpf] * len(kept)), pos, cache=fresh)
  idx = np.concatenate([np.arange(f * model.tpf, (f + 1) * model.tpf) for f in kept])
  slot = np.asarray(cache_lib.slots(after.cache, jnp.asarray(idx)[None]))[0]
  np.testing.assert_array_equal(np.asarray(after.cache.pos_BS[0, slot]), idx)
  assert int((after.cache.pos_BS[0] >= 0).sum()) == len(idx)
  for layer in range(model.tcfg.depth):
    np.testing.assert_allclose(after.cache.k[layer][:, :, slot], fresh.k[layer], atol=2e-5)
    np.testing.assert_allclose(after.cache.v[layer][:, :, slot], fresh.v[layer], atol=2e-5)
  # negative control: without re-cache the cache still holds the old prompt's keys, and the next frame depends on it
  assert not np.allclose(state.cache.k[0][:, :, slot], fresh.k[0], atol=1e-3)
  xt, t = frames(model, 1, seed=11)[:, 0], jnp.full((2, model.tpf), 0.5)
  velocity = jax.jit(lambda s: model.velocity(params, s.cache, xt, new, t, n))
  other, _ = streamed_state(model, params, n, 7)
  np.testing.assert_allclose(velocity(recache(params, other, new, n)), velocity(after), atol=2e-5)
  assert not np.allclose(velocity(other), velocity(state), atol=1e-3)


def test_stream_bytes_stop_growing_and_ten_clips_stream(model, params):
  s = model.stream(params, jnp.asarray([0, 3]), jax.random.PRNGKey(0), steps=1, compute_dtype="float32")
  per_frame = s.cache_bytes(allocated=True) // (model.sink + model.window)
  held = []
  for _ in range(10 * model.frames):
    out = s.next(1)
    held.append(s.cache_bytes())
  full_frames = model.sink + model.window
  assert held == [per_frame * min(k + 1, full_frames) for k in range(len(held))]
  assert out.shape == (2, 1, 32, 32, 3) and np.isfinite(out).all() and np.abs(out).max() <= 1
  s.switch(jnp.asarray([1, 1]))
  assert s.cache_bytes() == per_frame * full_frames and s.next(2).shape == (2, 2, 32, 32, 3)
  full = model.stream(params, jnp.asarray([0, 3]), jax.random.PRNGKey(0), steps=1, full=True, max_frames=6,
                      compute_dtype="float32")
  full.next(6)
  assert full.cache_bytes() == 6 * per_frame  # full causal attention keeps every frame


@pytest.mark.parametrize("mode", ["frame_ar", "long"])
def test_training_losses_are_finite(mode):
  m = build(window=1, sink=1, train_mode=mode)
  p = m.init(jax.random.PRNGKey(0), None)
  frames_n = 3
  latent = jax.random.normal(jax.random.PRNGKey(2), (2, frames_n, *m.latent_grid, m.latent_dim))
  labels = jnp.asarray([[0, 0, 3], [2, 2, 2]])  # row 0 switches prompt at the supervised frame

  def loss(latent, p):
    return m.loss(p, dict(latent=latent, labels=labels), jax.random.PRNGKey(1), train=False)[0]

  value, (g_latent, g_params) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(latent, p)
  assert np.isfinite(value) and all(np.isfinite(g).all() for g in jax.tree.leaves(g_params))
  per_frame = np.abs(np.asarray(g_latent)).sum(axis=(0, 2, 3, 4))
  if mode == "long":  # rollout frames feed only the detached cache: no gradient reaches them
    np.testing.assert_array_equal(per_frame[:frames_n - m.window], 0.0)
  assert (per_frame[frames_n - m.window:] > 0).all()


def test_bad_input_errors(model, params):
  with pytest.raises(ValueError, match="model.window=0"):
    build(window=0)
  with pytest.raises(ValueError, match="model.sink=3"):
    build(window=2, sink=3)
  with pytest.raises(ValueError, match="label out of range"):
    model.stream(params, jnp.asarray([0, 8 + 1]), jax.random.PRNGKey(0))
  s = model.stream(params, jnp.asarray([0, 1]), jax.random.PRNGKey(0), steps=1)
  with pytest.raises(ValueError, match="label out of range"):
    s.switch(jnp.asarray([-1, 0]))
  with pytest.raises(ValueError, match=r"expected \[2\]"):
    s.switch(jnp.asarray([0, 1, 2]))
  with pytest.raises(ValueError, match="switch mode"):
    s.switch(jnp.asarray([0, 1]), mode="jump")
  with pytest.raises(ValueError, match="unknown sampling option"):
    model.stream(params, jnp.asarray([0]), jax.random.PRNGKey(0), window=3)


def test_int8_stream_weights_within_the_rounding_bound():
  """stream(int8=True) quantises every large Dense kernel once: |w - q * scale| <= scale / 2 per weight."""
  from arjax.nn import quant
  model = build(width=48)  # kernels of >= 4096 weights (quant.quantize's min_size)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), None))
  s = model.stream(params, jnp.asarray([0, 1]), jax.random.PRNGKey(0), compute_dtype="float32", int8=True)
  flat_q = jax.tree_util.tree_leaves_with_path(s.params, is_leaf=lambda x: isinstance(x, quant.Int8))
  flat_w = dict(jax.tree_util.tree_leaves_with_path(params))
  checked = 0
  for path, leaf in flat_q:
    if isinstance(leaf, quant.Int8):
      w = np.asarray(flat_w[path])
      err = np.abs(w - np.asarray(leaf.q, np.float32) * np.asarray(leaf.scale))
      assert (err <= np.asarray(leaf.scale) / 2 + 1e-7).all(), path
      checked += 1
  assert checked and s.weight_bytes < quant.weight_bytes(params)


def test_skip_window_sink_views_agree_and_match_the_definition():
  rs = np.random.default_rng(0)
  for _ in range(150):
    blk, nb, w, s = (int(v) for v in (rs.integers(1, 4), rs.integers(1, 5), rs.integers(1, 4), rs.integers(0, 3)))
    spec = masks.skip_window_sink(blk, nb, w, s)
    q_len, kv_len, off, bq, bk = (int(v) for v in rs.integers(1, 24, 5))
    dense = spec.dense(q_len, kv_len, off % 8)
    np.testing.assert_array_equal(spec.evaluate(q_len, kv_len, off % 8), dense)
    table = spec.block_table(q_len, kv_len, bq, bk, off % 8)
    for i in range(table.shape[0]):
      for j in range(table.shape[1]):
        blk_ij = np.zeros((bq, bk), bool)
        sub = dense[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
        blk_ij[:sub.shape[0], :sub.shape[1]] = sub
        assert table[i, j] == (masks.FULL if blk_ij.all() else masks.PARTIAL if blk_ij.any() else masks.EMPTY)
  n = 2 * 6
  d = masks.skip_window_sink(2, 6, 3, 1).dense(2 * n, 2 * n)
  for q in range(2 * n):
    for k in range(2 * n):
      qb, kb, q_noised, k_noised = (q % n) // 2, (k % n) // 2, q >= n, k >= n
      near = qb - kb < 3 or kb < 1
      want = (not k_noised and kb <= qb and near) if not q_noised else (
          (k_noised and kb == qb) or (not k_noised and kb < qb and near))
      assert d[q, k] == want


def test_int8_kv_stream_holds_a_quarter_of_the_bytes_and_tracks_f32(model, params):
  """cache_dtype='int8': the ring holds int8 keys / values with one f32 scale per slot and head ((D + 4) / 4D of
  the f32 bytes) and streams the same frames as the f32 cache up to int8 rounding."""
  stream = lambda **opts: model.stream(params, jnp.asarray([0, 3]), jax.random.PRNGKey(0), steps=2,
                                      compute_dtype="float32", **opts)  # a stream donates its state's buffers
  f32, int8 = stream(), stream(cache_dtype="int8")
  a, b = f32.next(4), int8.next(4)
  d = model.net.tcfg.head_dim
  assert int8.cache_bytes() * 4 * d == f32.cache_bytes() * (d + 4)
  np.testing.assert_allclose(b, a, atol=0.01)  # pixels in [-1, 1]; measured max 1.3e-3
