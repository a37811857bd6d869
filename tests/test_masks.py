"""The mask language: block tables agree with dense masks; dense masks equal the papers' definitions."""
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
