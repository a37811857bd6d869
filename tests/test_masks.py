"""The mask language: block tables agree with dense masks; dense masks equal the papers' definitions."""
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from arjax import masks


def specs():
  sizes = st.lists(st.integers(1, 9), min_size=1, max_size=6).map(tuple)
  return st.one_of(
      st.just(masks.full()), st.just(masks.causal()), sizes.map(masks.block_causal),
      st.tuples(st.integers(1, 5), st.integers(1, 5)).map(lambda a: masks.skip_causal(*a)),
      st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(0, 3)).map(lambda a: masks.window_sink(*a)),
      st.tuples(st.integers(0, 6), st.sampled_from([masks.causal(), masks.block_causal((2, 3, 4))])).map(
          lambda a: masks.prefix(*a)))


@settings(max_examples=150, deadline=None)
@given(spec=specs(), q_len=st.integers(1, 40), kv_len=st.integers(1, 40), q_offset=st.integers(0, 12),
       block_q=st.integers(1, 9), block_k=st.integers(1, 9))
def test_block_table_agrees_with_dense(spec, q_len, kv_len, q_offset, block_q, block_k):
  dense = spec.dense(q_len, kv_len, q_offset)
  np.testing.assert_array_equal(spec.evaluate(q_len, kv_len, q_offset), dense)
  table = spec.block_table(q_len, kv_len, block_q, block_k, q_offset)
  nq, nk = -(-q_len // block_q), -(-kv_len // block_k)
  assert table.shape == (nq, nk) and table.dtype == np.int8
  for i in range(nq):
    for j in range(nk):
      blk = np.zeros((block_q, block_k), bool)  # padding counts as masked
      sub = dense[i * block_q:(i + 1) * block_q, j * block_k:(j + 1) * block_k]
      blk[:sub.shape[0], :sub.shape[1]] = sub
      expected = masks.FULL if blk.all() else masks.PARTIAL if blk.any() else masks.EMPTY
      assert table[i, j] == expected, (spec, i, j)


def test_specs_are_frozen_and_hashable():
  a, b = masks.prefix(2, masks.block_causal([1, 4])), masks.prefix(2, masks.block_causal((1, 4)))
  assert a == b and hash(a) == hash(b) and len({a, b, masks.causal()}) == 2
  with pytest.raises(Exception):
    a.n = 3


def test_causal_is_lower_triangular():
  np.testing.assert_array_equal(masks.causal().dense(5, 5), np.tril(np.ones((5, 5), bool)))
  # decoding 2 queries at offset 3 against 6 keys
  np.testing.assert_array_equal(masks.causal().dense(2, 6, 3), np.tril(np.ones((6, 6), bool))[3:5])


def test_block_causal_matches_var_definition():
  """VAR: token of scale s attends all tokens of scales <= s."""
  patch_nums = (1, 2, 3)
  scale_of = np.concatenate([np.full(p * p, s) for s, p in enumerate(patch_nums)])
  expected = scale_of[None, :] <= scale_of[:, None]
  np.testing.assert_array_equal(masks.block_causal([p * p for p in patch_nums]).dense(14, 14), expected)


def test_skip_causal_matches_acdit_definition():
  """ACDiT SCAM built elementwise from the paper's rules."""
  block, n_blocks = 2, 3
  n = block * n_blocks
  expected = np.zeros((2 * n, 2 * n), bool)
  for q in range(2 * n):
    for k in range(2 * n):
      q_noised, k_noised = q >= n, k >= n
      qb, kb = (q % n) // block, (k % n) // block
      if not q_noised:
        expected[q, k] = (not k_noised) and kb <= qb
      else:
        expected[q, k] = (k_noised and kb == qb) or ((not k_noised) and kb < qb)
  np.testing.assert_array_equal(masks.skip_causal(block, n_blocks).dense(2 * n, 2 * n), expected)
  # block == sequence: the noised half is full-sequence (bidirectional) diffusion
  whole = masks.skip_causal(n, 1).dense(2 * n, 2 * n)
  assert whole[n:, n:].all() and not whole[n:, :n].any()
  # block 1: clean half is token-wise causal AR
  tok = masks.skip_causal(1, n).dense(2 * n, 2 * n)
  np.testing.assert_array_equal(tok[:n, :n], np.tril(np.ones((n, n), bool)))


def test_window_sink_matches_longlive_definition():
  spec = masks.window_sink(block=2, window=2, sink=1)
  d = spec.dense(10, 10)
  frame = np.arange(10) // 2
  for q in range(10):
    visible = {f for f in range(frame[q] + 1) if f > frame[q] - 2 or f < 1}
    np.testing.assert_array_equal(d[q], np.isin(frame, list(visible)))


def test_prefix_shifts_inner():
  d = masks.prefix(2, masks.causal()).dense(5, 5)
  expected = np.array([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(d, expected)


@pytest.mark.parametrize("bad", [lambda: masks.block_causal([2, 0]), lambda: masks.skip_causal(0, 2),
                                 lambda: masks.window_sink(1, 0), lambda: masks.prefix(-1, masks.causal())])
def test_bad_arguments_raise(bad):
  with pytest.raises(ValueError):
    bad()


def combos():
  return st.recursive(specs(), lambda s: st.tuples(s, s, st.booleans()).map(
      lambda t: t[0] | t[1] if t[2] else t[0] & t[1]), max_leaves=4)


def blocks_of(dense, block_q, block_k):
  """[nq, nk, block_q, block_k] blocks of a dense mask, padding masked (the old full-grid construction)."""
  nq, nk = -(-dense.shape[0] // block_q), -(-dense.shape[1] // block_k)
  m = np.zeros((nq * block_q, nk * block_k), bool)
  m[:dense.shape[0], :dense.shape[1]] = dense
  return m.reshape(nq, block_q, nk, block_k).transpose(0, 2, 1, 3)


def assert_sound(table, blocks):
  """EMPTY blocks allow nothing; FULL blocks allow everything (padding included)."""
  assert not blocks[table == masks.EMPTY].any()
  assert blocks[table == masks.FULL].all()


@settings(max_examples=150, deadline=None)
@given(spec=combos(), q_len=st.integers(1, 40), kv_len=st.integers(1, 40), q_offset=st.integers(0, 12),
       block_q=st.integers(1, 9), block_k=st.integers(1, 9))
def test_combined_block_table_is_sound(spec, q_len, kv_len, q_offset, block_q, block_k):
  dense = spec.dense(q_len, kv_len, q_offset)
  np.testing.assert_array_equal(spec.evaluate(q_len, kv_len, q_offset), dense)
  blocks = blocks_of(dense, block_q, block_k)
  table = spec.block_table(q_len, kv_len, block_q, block_k, q_offset)
  assert table.shape == blocks.shape[:2] and table.dtype == np.int8
  assert_sound(table, blocks)
  np.testing.assert_array_equal(spec.allowed(np.arange(q_len)[None] + q_offset, np.arange(kv_len)[None])[0], dense)


def test_combinator_rules_and_hashing():
  a, b = masks.causal(), masks.window_sink(2, 1, 0)
  u, i = a | b, a & b
  assert u == (masks.causal() | masks.window_sink(2, 1)) and hash(i) == hash(masks.causal() & masks.window_sink(2, 1))
  assert u != i and isinstance(u, masks.Union) and isinstance(i, masks.Intersection)
  np.testing.assert_array_equal(u.dense(9, 9), a.dense(9, 9) | b.dense(9, 9))
  np.testing.assert_array_equal(i.dense(9, 9), a.dense(9, 9) & b.dense(9, 9))
  ta, tb = a.block_table(8, 8, 2, 2), b.block_table(8, 8, 2, 2)
  rule_or = np.where((ta == masks.FULL) | (tb == masks.FULL), masks.FULL,
                     np.where((ta == masks.EMPTY) & (tb == masks.EMPTY), masks.EMPTY, masks.PARTIAL))
  rule_and = np.where((ta == masks.EMPTY) | (tb == masks.EMPTY), masks.EMPTY,
                      np.where((ta == masks.FULL) & (tb == masks.FULL), masks.FULL, masks.PARTIAL))
  np.testing.assert_array_equal(u.block_table(8, 8, 2, 2), rule_or)
  np.testing.assert_array_equal(i.block_table(8, 8, 2, 2), rule_and)
  # conservative where the children's tables cannot decide: a 4-token window & (sink 0 or diagonal) sees
  # nothing of keys 0..3 from queries 4..7, yet both children are partial there
  disjoint = masks.window_sink(1, 4) & masks.window_sink(1, 1, sink=1)
  assert not disjoint.dense(8, 8)[4:, :4].any() and disjoint.block_table(8, 8, 4, 4)[1, 0] == masks.PARTIAL


def test_prefix_combines():
  window = masks.causal() & masks.window_sink(block=1, window=2)
  spec = masks.prefix(2, window)
  expected = np.zeros((6, 6), bool)
  for q in range(6):
    for k in range(6):
      expected[q, k] = k < 2 or (q >= 2 and k <= q < k + 2)
  np.testing.assert_array_equal(spec.dense(6, 6), expected)
  np.testing.assert_array_equal(spec.evaluate(6, 6), expected)
  both = masks.prefix(2, masks.causal()) | masks.prefix(1, masks.full())
  np.testing.assert_array_equal(both.dense(6, 6), masks.prefix(2, masks.causal()).dense(6, 6) | (
      masks.prefix(1, masks.full()).dense(6, 6)))
  assert_sound(spec.block_table(6, 6, 2, 4), blocks_of(expected, 2, 4))


@pytest.mark.parametrize("spec", [masks.full(), masks.causal(), masks.block_causal([1, 4, 9, 16, 4096]),
                                  masks.skip_causal(256, 128), masks.window_sink(512, 4, 1),
                                  masks.prefix(300, masks.causal()) | masks.window_sink(128, 2)])
def test_long_block_table_has_bounded_memory(spec):
  """65536^2 positions: the full grid would be 4 GiB; the table is built from block ranges."""
  tracemalloc.start()
  try:
    table = spec.block_table(65536, 65536, 128, 128)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert table.shape == (512, 512) and peak < 16 * 2 ** 20, peak
  small = spec.block_table(4096, 4096, 128, 128)  # same rule on a size the old construction can afford
  blocks = blocks_of(spec.evaluate(4096, 4096), 128, 128)
  np.testing.assert_array_equal(small, np.where(blocks.all((2, 3)), masks.FULL,
                                                np.where(blocks.any((2, 3)), masks.PARTIAL, masks.EMPTY)))


def random_ranks(rng, b, n, ties):
  return rng.integers(0, max(1, n // 2), (b, n)) if ties else np.stack([rng.permutation(n) for _ in range(b)])


@pytest.mark.parametrize("inclusive", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_ranked_dense_allowed_and_block_table(inclusive, ties):
  rng = np.random.default_rng(int(inclusive) * 2 + int(ties))
  for n, bq, bk in [(12, 4, 4), (13, 3, 5), (7, 8, 2), (16, 1, 1)]:
    rank = random_ranks(rng, 3, n, ties)
    spec = masks.ranked(rank, inclusive=inclusive)
    dense = spec.dense_batch()
    expected = np.array([[[(rank[b, j] <= rank[b, i]) if inclusive else (rank[b, j] < rank[b, i])
                           for j in range(n)] for i in range(n)] for b in range(3)])
    np.testing.assert_array_equal(dense, expected)
    idx = jnp.broadcast_to(jnp.arange(n), (3, n))
    np.testing.assert_array_equal(np.asarray(spec.allowed(idx, idx)), dense)
    table = np.asarray(jax.jit(lambda m: m.block_table(bq, bk))(spec))
    for b in range(3):  # per-block min/max ranks decide every block exactly
      blocks = blocks_of(dense[b], bq, bk)
      np.testing.assert_array_equal(table[b], np.where(blocks.all((2, 3)), masks.FULL,
                                                       np.where(blocks.any((2, 3)), masks.PARTIAL, masks.EMPTY)))


def test_ranked_order_semantics_and_errors():
  order = np.array([[2, 0, 3, 1]])  # generation order: position 2 first, then 0, 3, 1
  rank = np.argsort(order, axis=1)  # rank[p] = step at which position p is generated
  spec = masks.ranked(rank)
  d = spec.dense_batch()[0]
  assert not d[2].any() and d[0].tolist() == [False, False, True, False] and d[1].sum() == 3
  np.testing.assert_array_equal(masks.ranked(rank, inclusive=True).dense_batch()[0], d | np.eye(4, dtype=bool))
  # cache-style query: positions [1] against slots holding [2, 0, -1] (the caller masks -1)
  got = spec.allowed(jnp.array([[1]]), jnp.array([[2, 0, -1]]))
  assert got.shape == (1, 1, 3) and np.asarray(got)[0, 0, :2].tolist() == [True, True]
  with pytest.raises(TypeError, match="allowed"):
    spec.mask_fn(np.arange(4), np.arange(4))
  with pytest.raises(TypeError, match="allowed"):
    spec.dense(4, 4)
  with pytest.raises(TypeError, match="allowed"):
    (spec | masks.causal()).block_table(4, 4, 2, 2)
  with pytest.raises(ValueError):
    masks.ranked(np.arange(4))
  assert spec != masks.ranked(rank) and len({spec, spec}) == 1  # identity-hashed


def test_ranked_composes_via_allowed_under_jit():
  """'known tokens always visible': ranked | causal, traced with the ranks as a pytree leaf."""
  rank = np.array([[3, 1, 0, 2, 4], [0, 1, 2, 3, 4]])
  spec = masks.ranked(rank) | masks.causal()
  leaves, treedef = jax.tree_util.tree_flatten(spec)
  assert len(leaves) == 1 and jax.tree_util.tree_unflatten(treedef, leaves).b == masks.causal()
  idx = jnp.broadcast_to(jnp.arange(5), (2, 5))
  got = np.asarray(jax.jit(lambda m, q, k: m.allowed(q, k))(spec, idx, idx))
  np.testing.assert_array_equal(got, masks.ranked(rank).dense_batch() | np.tril(np.ones((5, 5), bool)))
  np.testing.assert_array_equal(got[1], np.tril(np.ones((5, 5), bool)))  # identity order is causal-strict | causal
  inter = np.asarray((masks.ranked(rank, inclusive=True) & masks.window_sink(1, 2)).allowed(idx, idx))
  np.testing.assert_array_equal(inter, masks.ranked(rank, inclusive=True).dense_batch() & (
      masks.window_sink(1, 2).dense(5, 5)))
  assert jax.tree_util.tree_leaves(masks.prefix(2, masks.causal()) & masks.full()) == []
  assert spec.is_runtime and masks.prefix(1, spec).is_runtime and not (masks.causal() & masks.full()).is_runtime
