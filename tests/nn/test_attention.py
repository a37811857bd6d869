"""Attention reference vs jax.nn.dot_product_attention; cached decoding vs the full forward."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax import masks
from arjax.nn import attention as attn_lib
from arjax.nn import rope
from arjax.nn.transformer import Transformer, TransformerConfig

SPECS = [masks.full(), masks.causal(), masks.block_causal((1, 4, 9, 3)), masks.skip_causal(3, 3),
         masks.window_sink(3, 2, 1), masks.prefix(4, masks.causal())]


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("q_len,kv_len,q_offset,heads,kv_heads", [(17, 17, 0, 4, 4), (5, 17, 12, 4, 2),
                                                                   (18, 18, 0, 4, 1)])
def test_xla_attention_matches_dot_product_attention(spec, q_len, kv_len, q_offset, heads, kv_heads):
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(kq, (2, q_len, heads, 8))
  k = jax.random.normal(kk, (2, kv_len, kv_heads, 8))
  v = jax.random.normal(kv, (2, kv_len, kv_heads, 8))
  dense = spec.dense(q_len, kv_len, q_offset)
  out = attn_lib.attention(q, k, v, spec, q_offset=q_offset, impl="xla")
  ref = jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(dense)[None, None])
  rows = dense.any(-1)
  np.testing.assert_allclose(np.asarray(out)[:, rows], np.asarray(ref)[:, rows], atol=1e-5, rtol=1e-5)
  assert np.all(np.asarray(out)[:, ~rows] == 0)  # fully masked rows are zeros, not NaN


def test_runtime_ranked_mask_goes_to_xla():
  """ranked (no static block table): impl='auto' serves it by XLA, per example, equal to its dense_batch."""
  rank_BN = jnp.stack([jax.random.permutation(jax.random.PRNGKey(0), 6), jnp.arange(6)[::-1]])
  spec = masks.ranked(rank_BN)
  q = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 2, 8))
  dense = spec.dense_batch()
  ref = jax.nn.dot_product_attention(q, q, q, mask=jnp.asarray(dense)[:, None])
  out = attn_lib.attention(q, q, q, spec)
  rows = dense.any(-1)
  np.testing.assert_allclose(np.asarray(out)[rows], np.asarray(ref)[rows], atol=1e-5)
  assert attn_lib.is_runtime(spec | masks.causal()) and not attn_lib.is_runtime(masks.causal())


def test_unknown_impl_and_unservable_pallas_raise():
  q = jnp.zeros((1, 4, 2, 8))
  with pytest.raises(ValueError, match="impl"):
    attn_lib.attention(q, q, q, masks.causal(), impl="cuda")
  with pytest.raises(ValueError, match="served by XLA only"):
    attn_lib.cached_attention(q, q, q, masks.block_causal((2, 2)), jnp.arange(4)[None], jnp.arange(4)[None],
                              impl="pallas")
  with pytest.raises(ValueError, match="run-time mask"):
    attn_lib.attention(q, q, q, masks.ranked(jnp.arange(4)[None]), impl="pallas")


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="no GPU lowering: impl='pallas' is refused on GPU")
@pytest.mark.parametrize("pos,qk_norm", [("rope2d", "rms"), ("rope1d", "l2")])
def test_transformer_pallas_matches_xla_full_and_cached(pos, qk_norm):
  """impl='pallas' (flash for the full pass, decode kernel for cached steps) equals impl='xla'."""
  kw = dict(width=32, depth=2, heads=4, kv_heads=2, pos=pos, qk_norm=qk_norm)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 32))
  positions = rope.grid_positions(3, 4) if pos == "rope2d" else None
  params = nn.meta.unbox(Transformer(TransformerConfig(**kw, impl="xla")).init(
      jax.random.PRNGKey(1), x, masks.causal(), positions=positions))
  outs = {}
  for impl in ("xla", "pallas"):
    model = Transformer(TransformerConfig(**kw, impl=impl))
    full, _ = model.apply(params, x, masks.causal(), positions=positions)
    cache = model.init_cache(2, 12)
    h1, cache = model.apply(params, x[:, :7], masks.causal(), positions=None if positions is None else positions[:7],
                            cache=cache)
    h2, cache = model.apply(params, x[:, 7:8], masks.causal(),
                            positions=None if positions is None else positions[7:8], cache=cache)
    outs[impl] = (full, h1, h2)
  for a, b in zip(outs["xla"], outs["pallas"]):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_rope_is_relative():
  """<R(p) q, R(p') k> depends only on p - p' (per axis for 2D)."""
  q, k = jax.random.normal(jax.random.PRNGKey(1), (2, 1, 1, 1, 16))
  def dot(pq, pk):
    aq = rope.rope_angles(jnp.asarray([[pq]]), 16)
    ak = rope.rope_angles(jnp.asarray([[pk]]), 16)
    return float((rope.apply_rope(q, aq) * rope.apply_rope(k, ak)).sum())
  np.testing.assert_allclose(dot((3, 5), (1, 2)), dot((7, 9), (5, 6)), rtol=1e-5)
  assert abs(dot((3, 5), (1, 2)) - dot((3, 5), (2, 2))) > 1e-4


@pytest.mark.parametrize("pos,adaln,spec,qk_norm", [
    ("rope1d", False, masks.causal(), "rms"), ("learned", True, masks.causal(), "l2"),
    ("rope2d", False, masks.causal(), False), ("rope1d", False, masks.block_causal((1, 4, 9)), "l2")])
def test_cached_decoding_matches_full_forward(pos, adaln, spec, qk_norm):
  model = Transformer(TransformerConfig(width=32, depth=2, heads=4, kv_heads=2, pos=pos, qk_norm=qk_norm,
                                        adaln=adaln, max_len=32, mlp="gelu_tanh" if adaln else "swiglu",
                                        norm="layer" if adaln else "rms", impl="xla"))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 14, 32))
  cond = jax.random.normal(jax.random.PRNGKey(2), (2, 32)) if adaln else None
  positions = rope.grid_positions(4, 4)[:14] if pos == "rope2d" else None
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(1), x, spec, positions=positions, cond_BC=cond))
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(3), p.shape), params)
  full, _ = model.apply(params, x, spec, positions=positions, cond_BC=cond)
  # feed in chunks that respect the block structure (1 + 4 + 9 for block-causal) or one by one
  chunks = [(0, 1), (1, 5), (5, 14)] if isinstance(spec, masks.BlockCausal) else [(0, 3)] + [
      (i, i + 1) for i in range(3, 14)]
  cache = model.init_cache(2, 16)
  outs = []
  apply = jax.jit(model.apply, static_argnums=2)
  for a, b in chunks:
    h, cache = apply(params, x[:, a:b], spec, positions=None if positions is None else positions[a:b],
                           cond_BC=cond, cache=cache)
    outs.append(h)
  np.testing.assert_array_equal(cache.end_B, [14, 14])
  np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5, rtol=0)
