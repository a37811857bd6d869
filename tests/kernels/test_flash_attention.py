"""flash_attention (interpret mode) vs. the dense jnp reference and jax.nn.dot_product_attention."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import masks
from kernels_pallas import flash_attention as _flash, flash_attention_visits as _visits
from kernels_pallas.flash_attention import FlashConfig, block_lists, compact_rows, supported
from kernels_pallas.reference import attention_reference

# interpret mode on every backend (the default picks it on CPU only; on GPU the kernels refuse to run)
flash_attention = functools.partial(_flash, interpret=True)
flash_attention_visits = functools.partial(_visits, interpret=True)

VAR_SIZES = (1, 4, 9, 16, 25, 36, 64)  # 155 tokens

# name, mask, Lq, Lk, q_offset, H, Hkv, D, block_q, block_k
CASES = [
    ("causal_mqa_odd", masks.causal(), 37, 37, 0, 2, 1, 8, 8, 16),
    ("causal_offset_gqa", masks.causal(), 13, 45, 32, 4, 2, 16, 8, 8),
    ("var_scales", masks.block_causal(VAR_SIZES), 155, 155, 0, 2, 2, 8, 16, 16),
    ("var_last_two_scales", masks.block_causal(VAR_SIZES), 100, 155, 55, 2, 1, 8, 16, 16),
    ("skip_causal", masks.skip_causal(5, 4), 40, 40, 0, 2, 2, 8, 8, 8),
    ("skip_causal_noised_sees_nothing", masks.skip_causal(4, 3), 24, 12, 0, 2, 1, 8, 8, 8),
    ("window_sink_odd", masks.window_sink(4, 3, 1), 45, 45, 0, 2, 2, 16, 8, 8),
    ("window_sink_offset_empty_rows", masks.window_sink(4, 2, 0), 9, 23, 27, 4, 1, 8, 8, 8),
    ("prefix_causal", masks.prefix(7, masks.causal()), 33, 33, 0, 2, 2, 8, 8, 16),
    ("prefix_block_causal", masks.prefix(6, masks.block_causal((3, 5, 9))),
     23, 23, 0, 2, 1, 8, 8, 8),
    ("full_gqa", masks.full(), 19, 50, 0, 4, 2, 8, 8, 16),
]
IDS = [c[0] for c in CASES]


def _inputs(lq, lk, h, hk, d, dtype, seed=0):
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(kq, (2, lq, h, d), dtype), jax.random.normal(kk, (2, lk, hk, d), dtype),
          jax.random.normal(kv, (2, lk, hk, d), dtype))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_references(case):
  _, mask, lq, lk, off, h, hk, d, bq, bk = case
  q, k, v = _inputs(lq, lk, h, hk, d, jnp.float32)
  out = jax.jit(lambda q, k, v: flash_attention(q, k, v, mask, q_offset=off, block_q=bq,
                                                block_k=bk))(q, k, v)
  ref = attention_reference(q, k, v, mask, q_offset=off)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)

  dense_QK = mask.dense(lq, lk, off)
  seen_Q = dense_QK.any(axis=1)
  xla = jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(dense_QK)[None, None],
                                     implementation="xla")
  np.testing.assert_allclose(out[:, seen_Q], xla[:, seen_Q], atol=1e-5, rtol=1e-5)
  assert np.all(np.asarray(out[:, ~seen_Q]) == 0.0)


def test_cases_cover_empty_rows_and_sparsity():
  tables = {c[0]: c[1].block_table(c[2], c[3], c[8], c[9], c[4]) for c in CASES}
  assert sum(not c[1].dense(c[2], c[3], c[4]).any(1).all() for c in CASES) >= 2
  assert all((t == masks.EMPTY).any() for n, t in tables.items() if n != "full_gqa")
  assert all((t == masks.PARTIAL).any() and (t == masks.FULL).any()
             for n, t in tables.items()
             if n in ("var_scales", "var_last_two_scales", "skip_causal", "window_sink_odd"))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_match_reference(case):
  _, mask, lq, lk, off, h, hk, d, bq, bk = case
  q, k, v = _inputs(lq, lk, h, hk, d, jnp.float32, seed=1)
  w = jax.random.normal(jax.random.PRNGKey(2), (2, lq, h, d))

  def loss(fn):
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(w * jnp.tanh(fn(q, k, v))), argnums=(0, 1, 2)))

  got = loss(lambda q, k, v: flash_attention(q, k, v, mask, q_offset=off, block_q=bq,
                                             block_k=bk))(q, k, v)
  want = loss(lambda q, k, v: attention_reference(q, k, v, mask, q_offset=off))(q, k, v)
  for name, g, r in zip("qkv", got, want):
    assert np.isfinite(np.asarray(g)).all(), name
    np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4, err_msg=f"d{name}")


BF16 = (1, 2, 4, 7)


@pytest.mark.parametrize("case", [CASES[i] for i in BF16], ids=[IDS[i] for i in BF16])
def test_forward_bf16(case):
  _, mask, lq, lk, off, h, hk, d, bq, bk = case
  q, k, v = _inputs(lq, lk, h, hk, d, jnp.bfloat16, seed=3)
  out = flash_attention(q, k, v, mask, q_offset=off, block_q=bq, block_k=bk)
  assert out.dtype == jnp.bfloat16
  ref = attention_reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                            mask, q_offset=off)
  np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_visits_exactly_the_non_empty_blocks(case):
  _, mask, lq, lk, off, h, hk, d, bq, bk = case
  q, k, v = _inputs(lq, lk, h, hk, d, jnp.float32)
  visits = np.asarray(flash_attention_visits(q, k, v, mask, q_offset=off, block_q=bq, block_k=bk))
  table = mask.block_table(lq, lk, bq, bk, off)
  want = np.stack([(table == masks.PARTIAL).sum(1), (table == masks.FULL).sum(1)], axis=1)
  assert visits.shape == (2, h) + want.shape
  np.testing.assert_array_equal(visits, np.broadcast_to(want, visits.shape))


def test_default_blocks_and_q_offset_default():
  q, k, v = _inputs(21, 21, 2, 2, 8, jnp.float32)
  out = flash_attention(q, k, v, masks.causal())
  np.testing.assert_allclose(out, attention_reference(q, k, v, masks.causal()), atol=1e-5)


def test_compact_rows_lists_non_empty_columns_in_order():
  table = np.array([[0, 2, 1, 0], [0, 0, 0, 0], [1, 0, 0, 2]], np.int8)
  idx, kind = compact_rows(table)
  np.testing.assert_array_equal(idx, [[1, 2], [0, 0], [0, 3]])
  np.testing.assert_array_equal(kind, [[2, 1], [0, 0], [1, 2]])


def test_backward_table_is_the_transpose_per_head_group():
  mask = masks.block_causal(VAR_SIZES)
  cfg = FlashConfig(mask, q_offset=0, q_len=155, kv_len=155, block_q=16, block_k=16, sm_scale=1.0,
                    interpret=True)
  tabs = block_lists(cfg, rep=2)
  table = tabs["table"]
  width = tabs["k_width"]
  idx = tabs["k_idx"].reshape(-1, width)
  kind = tabs["k_kind"].reshape(-1, width)
  head = tabs["k_head"].reshape(-1, width)
  for kb in range(table.shape[1]):
    for g in range(2):
      listed = idx[kb][(head[kb] == g) & (kind[kb] > 0)]
      np.testing.assert_array_equal(listed, np.flatnonzero(table[:, kb]))
  assert (kind > 0).sum() == 2 * (table > 0).sum()


def test_supported_reasons_and_errors():
  ok, why = supported(masks.causal(), (1, 8, 4, 8), (1, 8, 2, 8), jnp.float32, "gpu")
  assert not ok and "XLA" in why
  assert supported(masks.causal(), (1, 8, 4, 8), (1, 8, 3, 8), jnp.float32, "tpu")[0] is False
  assert supported("causal", (1, 8, 4, 8), (1, 8, 2, 8), jnp.float32, "tpu")[0] is False
  assert supported(masks.causal(), (1, 8, 4, 8), (1, 8, 2, 8), jnp.float16, "tpu")[0] is False
  assert supported(masks.causal(), (1, 8, 4, 8), (1, 8, 2, 8), jnp.bfloat16, "tpu")[0] is True
  q, k, v = _inputs(8, 8, 3, 2, 8, jnp.float32)
  with pytest.raises(ValueError, match="multiple of kv heads"):
    flash_attention(q, k, v, masks.causal())
  q, k, v = _inputs(8, 8, 2, 2, 8, jnp.float32)
  with pytest.raises(ValueError, match="q_offset"):
    flash_attention(q, k, v, masks.causal(), q_offset=jnp.int32(3))
