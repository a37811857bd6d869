"""AS-ARM paradigm: the network honours ASSD's logits_fn contract exactly (position i depends on exactly the tokens of
lower rank, ties included), training ranks follow the joint scheme, the loss / NLL equal references computed
position by position, and greedy ASSD infilling equals greedy sequential infilling."""
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from arjax.paradigms import any_order
from arjax.sampling import assd

GRID, V = (2, 3), 7
N = GRID[0] * GRID[1]


def make(tokens="image", **extra):
  cfg = ml_collections.ConfigDict(dict(name="any_order", num_classes=3, width=32, tokens=tokens, label_drop=0.1,
                                       transformer=dict(depth=2, heads=2, pos="rope2d" if tokens == "image" else
                                                        "rope1d", impl="xla"), **extra))
  model = any_order.AnyOrder(cfg, types.SimpleNamespace(grid=GRID, vocab_size=V), None)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), None))
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
  model.logits = jax.jit(model.logits)  # one compile per test instead of op-by-op dispatch
  return model, params


@pytest.fixture(scope="module")
def tiny():
  return make()


def test_position_i_depends_on_exactly_the_tokens_of_lower_rank(tiny):
  model, params = tiny
  cond = {"label": jnp.array([1, 2])}
  tokens = jnp.array([[1, 2, 3, 4, 5, 6], [0, 6, 5, 4, 3, 2]])
  rank = jnp.array([[0, 3, 1, 0, 2, 4], [2, 2, 0, 1, 7, 7]])  # row 1: ties (like ASSD's draft pass)
  base = np.asarray(model.logits(params, cond, tokens, rank))
  for i in range(N):
    changed = np.asarray(model.logits(params, cond, tokens.at[:, i].add(3) % V, rank))
    moved_BN = np.abs(changed - base).max(-1) > 1e-5
    np.testing.assert_array_equal(moved_BN, np.asarray(rank[:, i:i + 1] < rank), err_msg=f"perturbing token {i}")


def test_raster_nll_in_one_pass_equals_one_pass_per_position_with_tied_future(tiny):
  model, params = tiny
  tokens = jax.random.randint(jax.random.PRNGKey(2), (3, N), 0, V)
  batch = dict(tokens=tokens, label=jnp.array([0, 1, 2]))
  want = np.zeros(3)
  for i in range(N):  # the future (positions >= i) tied at one rank above the past, as in ASSD's draft pass
    rank = jnp.broadcast_to(jnp.where(jnp.arange(N) < i, jnp.arange(N) + 1, N + 1), tokens.shape)
    logp = jax.nn.log_softmax(model.logits(params, {"label": batch["label"]}, tokens, rank)[:, i])
    want -= np.asarray(jnp.take_along_axis(logp, tokens[:, i:i + 1], 1)[:, 0])
  np.testing.assert_allclose(np.asarray(model.nll(params, batch)), want, rtol=1e-5)


def test_train_ranks_follow_the_joint_scheme():
  model, _ = make(mask_warmup_steps=100, raster_frac=0.5)
  big = any_order.AnyOrder(ml_collections.ConfigDict(dict(
      name="any_order", num_classes=3, width=32, mask_warmup_steps=100, raster_frac=0.5,
      transformer=dict(depth=1, heads=2, pos="rope2d"))), types.SimpleNamespace(grid=(10, 10), vocab_size=V), None)
  for step, lo, hi in ((0, 15, 15), (None, 85, 99), (200, 85, 99), (50, 50, 57)):
    rank = np.asarray(big.train_ranks(jax.random.PRNGKey(0), 64, None if step is None else jnp.asarray(step)))
    assd.check_ranks(rank)
    m = rank.max(1)
    assert lo <= m.min() and m.max() <= hi, (step, m.min(), m.max())
  raster = [np.all(np.diff(r[r > 0]) > 0) for r in rank]  # masked ranks increasing with position
  assert 16 < sum(raster) < 48
  assert len(model.train_ranks(jax.random.PRNGKey(0), 2)) == 2


def test_loss_is_mean_nll_over_masked_tokens(tiny):
  model, params = tiny
  tokens = jax.random.randint(jax.random.PRNGKey(3), (4, N), 0, V)
  batch = dict(tokens=tokens, label=jnp.array([0, 1, 2, 0]))
  rng = jax.random.PRNGKey(4)
  loss, metrics = jax.jit(model.loss, static_argnames="train")(params, batch, rng, train=False)
  rank = model.train_ranks(jax.random.split(rng)[1], 4)
  logp = np.asarray(jax.nn.log_softmax(model.logits(params, {"label": batch["label"]}, tokens, rank)))
  nll = -np.take_along_axis(logp, np.asarray(tokens)[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, nll[np.asarray(rank) > 0].mean(), rtol=1e-5)
  assert 0 < metrics["mask_rate"] <= 1


def test_order_ranks(tiny):
  model, _ = tiny
  known = jnp.array([[1, 0, 0, 1, 0, 0], [0] * 6, [1] * 6], bool)
  np.testing.assert_array_equal(model.order_ranks(known, "raster", None),
                                [[0, 1, 2, 0, 3, 4], [1, 2, 3, 4, 5, 6], [0] * 6])
  rank = np.asarray(model.order_ranks(known, "random", jax.random.PRNGKey(0)))
  assd.check_ranks(rank)
  np.testing.assert_array_equal(rank == 0, known)


def test_greedy_assd_infill_equals_greedy_sequential(tiny, order="random"):
  model, params = tiny
  tokens = jax.random.randint(jax.random.PRNGKey(5), (3, *GRID), 0, V)
  known = jnp.array([[[1, 0, 0], [0, 1, 0]], [[0, 0, 0], [0, 0, 0]], [[1, 1, 1], [1, 1, 0]]], bool)
  cond = {"label": jnp.array([0, 1, 2])}
  rng = jax.random.PRNGKey(6)
  seq, nfe1 = model.infill(params, tokens, known, rng, cond=cond, order=order, draft_len=1, temperature=0.0)
  spec, nfe4 = model.infill(params, tokens, known, rng, cond=cond, order=order, draft_len=4, temperature=0.0)
  np.testing.assert_array_equal(np.asarray(spec), np.asarray(seq))
  np.testing.assert_array_equal(np.asarray(seq)[np.asarray(known)], np.asarray(tokens)[np.asarray(known)])
  todo = (~known).reshape(3, -1).sum(1)
  np.testing.assert_array_equal(nfe1, todo)
  assert (np.asarray(nfe4) <= todo).all()


def test_sample_with_guidance_and_caption_bytes(tiny):
  model, params = tiny
  tokens, nfe = model.sample_tokens(params, {"label": jnp.array([0, 2])}, jax.random.PRNGKey(0), draft_len=3,
                                    order="random", cfg_scale=2.0)
  assert tokens.shape == (2, N) and (np.asarray(nfe) <= N).all()
  text = any_order.CaptionBytes(length=8, render_size=32)
  raw = np.array([list(b"a red\0\0\0")], np.uint8)
  assert text.text(text.encode(None, jnp.asarray(raw))) == ["a red"]
  images = text.decode(None, raw)
  assert images.shape == (1, 32, 32, 3) and images.min() == -1 and images.max() > 0


def test_bad_input_is_refused(tiny):
  model, params = tiny
  tokens, known = jnp.zeros((1, N), jnp.int32), jnp.zeros((1, N), bool)
  with pytest.raises(ValueError, match="order must be one of"):
    model.infill(params, tokens, known, jax.random.PRNGKey(0), order="spiral")
  with pytest.raises(ValueError, match="draft_len"):
    model.infill(params, tokens, known, jax.random.PRNGKey(0), draft_len=0)
  with pytest.raises(ValueError, match="known_mask"):
    model.infill(params, tokens, known[:, :3], jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="unknown sampling option"):
    model.sample_tokens(params, {"label": jnp.array([0])}, jax.random.PRNGKey(0), draft=2)
  cfg = ml_collections.ConfigDict(dict(name="any_order", num_classes=3, width=32,
                                       transformer=dict(depth=1, heads=2, pos="rope2d")))
  with pytest.raises(ValueError, match="needs a frozen tokenizer"):
    any_order.AnyOrder(cfg)
  cfg.transformer.pos = "learned"
  with pytest.raises(ValueError, match="rope1d"):
    any_order.AnyOrder(cfg, types.SimpleNamespace(grid=GRID, vocab_size=V), None)
