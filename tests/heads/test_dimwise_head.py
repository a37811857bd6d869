"""The per-dimension AR head: teacher forcing equals the cached sampler, channel orders round-trip, samples
follow the exact joint (enumerated, chi-square), guidance acts on the backbone features, bad configs."""
import functools
import itertools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from arjax import heads
from arjax.heads.dimwise import DimwiseHead
from arjax.tokenizers import dimwise as quant

LEVELS, C, D = 3, 3, 6
GRID = (LEVELS, 3.0, -2.0, 2.0)


def cfg(**kw):
  return ml_collections.ConfigDict({**dict(kind="dimwise", width=16, depth=2, heads=2), **kw})


def make(order=None):
  head = DimwiseHead(C, cfg(), levels=LEVELS, std_range=3.0, x_min=-2.0, x_max=2.0, order=order)
  z = jax.random.normal(jax.random.PRNGKey(0), (4, D))
  params = nn.meta.unbox(head.init(jax.random.PRNGKey(1), z))
  params = jax.tree.map(lambda p: p + 0.2 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
  return head, params


@functools.lru_cache(maxsize=None)
def jitted(head):
  return (jax.jit(head.sample_indices), jax.jit(head.logits), jax.jit(head.loss),
          jax.jit(head.sample, static_argnames="guide_scale"))


def test_teacher_forced_logits_equal_the_cached_samplers():
  head, params = make(order=(2, 0, 1))
  sample_indices, logits, _, _ = jitted(head)
  z = jax.random.normal(jax.random.PRNGKey(3), (64, D))
  idx, drawn_logits = sample_indices(params, z, jax.random.PRNGKey(4), 1.0)
  forced = logits(params, z, quant.dequantize(idx, *GRID))
  assert np.abs(np.asarray(drawn_logits)).max() > 0.1
  np.testing.assert_allclose(forced, drawn_logits, atol=2e-5)


def test_a_channel_order_round_trips():
  """Order (2, 0, 1) on x equals the identity order on x's channels permuted into (2, 0, 1), with the same params;
  its samples come back in the channel layout."""
  perm = (2, 0, 1)
  head, params = make(order=perm)
  plain, _ = make()
  z = jax.random.normal(jax.random.PRNGKey(3), (32, D))
  x = quant.dequantize(jax.random.randint(jax.random.PRNGKey(5), (32, C), 0, LEVELS), *GRID)
  np.testing.assert_allclose(jitted(head)[2](params, z, x, None), jitted(plain)[2](params, z, x[:, perm], None),
                             atol=1e-6)
  a = jitted(head)[3](params, z, jax.random.PRNGKey(6))
  b = jitted(plain)[3](params, z, jax.random.PRNGKey(6))
  np.testing.assert_array_equal(np.asarray(a)[:, perm], b)
  assert head.inverse == (1, 2, 0)


def test_samples_follow_the_exact_joint():
  """Frequencies of 24000 draws for one feature vs p(t) = prod_j softmax(logits_j / T)[t_j] over all 27
  sequences, the logits taken by teacher forcing; at T=0.6 the untempered joint is rejected."""
  head, params = make(order=(1, 2, 0))
  sample_indices, logits, _, _ = jitted(head)
  z = jax.random.normal(jax.random.PRNGKey(7), (1, D))
  seqs_KC = np.array(list(itertools.product(range(LEVELS), repeat=C)))  # in channel layout
  forced = np.asarray(logits(params, jnp.repeat(z, len(seqs_KC), 0), quant.dequantize(seqs_KC, *GRID)), np.float64)
  tok_KC = seqs_KC[:, head.order]  # AR order, as the logits

  def joint(t):
    logp = forced / t - np.log(np.exp(forced / t).sum(-1, keepdims=True))
    return np.exp(np.take_along_axis(logp, tok_KC[..., None], -1)[..., 0].sum(-1))

  n = 24000
  for t in (1.0, 0.6):
    idx = np.asarray(sample_indices(params, jnp.repeat(z, n, 0), jax.random.PRNGKey(8), t)[0])
    counts = np.bincount(np.ravel_multi_index(idx.T, (LEVELS,) * C), minlength=len(seqs_KC))
    p = joint(t)
    assert abs(p.sum() - 1) < 1e-9 and p.max() < 0.5 and (p > 1e-3).sum() > 10
    assert stats.chisquare(counts, n * p).pvalue > 1e-3
  assert stats.chisquare(counts, n * joint(1.0)).pvalue < 1e-6


def test_guidance_combines_the_backbone_features():
  """guide_scale s on [z_c ; z_u] samples from z_u + s (z_c - z_u): s = 1 is z_c itself."""
  head, params = make()
  sample = jitted(head)[3]
  z_c, z_u = (jax.random.normal(jax.random.PRNGKey(k), (16, D)) for k in (9, 10))
  rng = jax.random.PRNGKey(11)
  guided = np.asarray(sample(params, jnp.concatenate([z_c, z_u]), rng, guide_scale=3.0))
  np.testing.assert_array_equal(guided, sample(params, z_u + 3.0 * (z_c - z_u), rng))
  np.testing.assert_array_equal(sample(params, jnp.concatenate([z_c, z_u]), rng, guide_scale=1.0),
                                sample(params, z_c, rng))
  assert np.isin(guided, np.asarray(quant.dequantize(np.arange(LEVELS), *GRID))).all()


def test_build_takes_the_tokenizers_grid_and_order_and_rejects_bad_input():
  tok = types.SimpleNamespace(grid_args=(16, 3.0, -5.0, 5.0), channel_order=lambda params: (3, 1, 0, 2))
  head = heads.build(4, cfg(), tok, None)
  assert head.order == (3, 1, 0, 2) and head.grid == (16, 3.0, -5.0, 5.0)
  assert heads.build(4, cfg(order="identity"), tok, None).order == (0, 1, 2, 3)
  assert heads.build(4, cfg(order="1,0,3,2"), tok, None).order == (1, 0, 3, 2)
  with pytest.raises(ValueError, match="permutation"):
    heads.build(4, cfg(order="0,1,1,2"), tok, None)
  with pytest.raises(ValueError, match="model.head.order"):
    heads.build(4, cfg(order="lowfreq"), tok, None)
  with pytest.raises(ValueError, match="needs the 'dimwise' tokenizer"):
    heads.build(4, cfg(), types.SimpleNamespace(latent_dim=4), None)
  with pytest.raises(ValueError, match="levels must be an integer >= 2"):
    DimwiseHead(4, cfg(), levels=1)
  with pytest.raises(ValueError, match="x_min must be < x_max"):
    DimwiseHead(4, cfg(), levels=8, x_min=1.0, x_max=1.0)
