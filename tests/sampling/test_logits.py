"""Logits processing against brute-force numpy, and sampled frequencies against the exact distribution."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from arjax.sampling import guidance as G
from arjax.sampling import logits as L


def np_top_k(x, k):
  keep = np.argsort(-x)[:k]
  out = np.full_like(x, -np.inf)
  out[keep] = x[keep]
  return out


def np_top_p(x, p):
  probs = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
  order = np.argsort(-probs)
  out = np.full_like(x, -np.inf)
  mass = 0.0
  for i in order:
    out[i] = x[i]
    mass += probs[i]
    if mass >= p:
      break
  return out


@pytest.mark.parametrize("k", [1, 3, 7, 10, 0])
def test_top_k(k):
  x = np.random.default_rng(k).normal(size=(4, 10)).astype(np.float32)
  got = np.asarray(L.filter_logits(jnp.asarray(x), k))
  for row, g in zip(x, got):
    ref = np_top_k(row, k if k > 0 else 10)
    np.testing.assert_array_equal(np.isfinite(ref), g > L.NEG_INF / 2)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.999, 1.0])
def test_top_p(p):
  x = np.random.default_rng(int(p * 100)).normal(size=(4, 12)).astype(np.float32) * 2
  got = np.asarray(L.filter_logits(jnp.asarray(x), 0, p))
  for row, g in zip(x, got):
    np.testing.assert_array_equal(np.isfinite(np_top_p(row, p)), g > L.NEG_INF / 2)


def test_sampled_frequencies_match_filtered_distribution():
  """Chi-square test of 20k draws against the exact top-k + temperature distribution."""
  logits = np.log(np.array([0.4, 0.25, 0.15, 0.12, 0.08], np.float32))
  n, temperature = 20000, 0.7
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  draws = jax.vmap(lambda k: L.sample_categorical(k, jnp.asarray(logits)[None], temperature=temperature,
                                                  top_k=3)[0])(keys)
  counts = np.bincount(np.asarray(draws), minlength=5)
  assert counts[3:].sum() == 0
  z = logits[:3].astype(np.float64) / temperature
  expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum() * n
  assert stats.chisquare(counts[:3], expected).pvalue > 1e-3


def test_greedy_and_cfg():
  x = jnp.asarray([[0.1, 3.0, -1.0]])
  assert int(L.sample_categorical(jax.random.PRNGKey(0), x, temperature=0.0)[0]) == 1
  np.testing.assert_allclose(G.combine(jnp.stack([jnp.ones(3), jnp.zeros(3)]), 2.5), [2.5 * np.ones(3)])
  np.testing.assert_allclose(G.scale_at(3.0, 0.5, "linear"), 2.0)
  np.testing.assert_allclose(G.scale_at(3.0, 0.5, "cosine"), 2.0, rtol=1e-6)
  np.testing.assert_allclose(G.scale_at(3.0, 0.25, "cosine"), 1 + 2 * 0.5 * (1 - np.cos(np.pi / 4)), rtol=1e-6)
  with pytest.raises(ValueError):
    G.scale_at(3.0, 0.5, "cubic")
  with pytest.raises(ValueError):
    G.Guidance(2.0, "cubic")


def test_guided_draw_matches_combined_logits():
  cond, uncond = jnp.asarray([[0.0, 2.0, 1.0]]), jnp.asarray([[1.0, 0.0, 0.5]])
  scale = 3.0
  want = uncond + scale * (cond - uncond)  # argmax 1
  got = L.draw(jax.random.PRNGKey(0), jnp.concatenate([cond, uncond]), scale, temperature=0.0)
  assert got.shape == (1,) and int(got[0]) == int(jnp.argmax(want))


@pytest.mark.parametrize("k,p", [(1, 1.0), (4, 1.0), (0, 0.7), (12, 0.3), (5, 0.9)])
def test_filter_static_equals_traced(k, p):
  x = jnp.asarray(np.random.default_rng(k).normal(size=(5, 12)).astype(np.float32))
  np.testing.assert_array_equal(np.asarray(L.filter_logits(x, k, p)), np.asarray(jax.jit(L.filter_logits)(x, k, p)))


def test_filter_at_var_scale_matches_sorting_reference():
  """VAR's top-k 900 / top-p 0.96 over 4096 codes, negative and positive logits: the sort-free cut-offs keep
  exactly the tokens the sorted numpy reference keeps."""
  x = (np.random.default_rng(0).normal(size=(6, 4096)) * 3).astype(np.float32)
  got = np.asarray(L.filter_logits(jnp.asarray(x), 900, 0.96)) > L.NEG_INF / 2
  want = np.stack([np.isfinite(np_top_p(np_top_k(row.astype(np.float64), 900), 0.96)) for row in x])
  np.testing.assert_array_equal(got, want)
  assert 100 < got.sum(-1).min() and got.sum(-1).max() < 900  # both cut-offs are active


def test_filter_keeps_ties_and_the_top_token():
  x = jnp.asarray([[3.0, 2.0, 2.0, -1.0, -0.0, 0.0]])
  np.testing.assert_array_equal(np.asarray(L.filter_logits(x, 2)) > L.NEG_INF / 2, [[1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(np.asarray(L.filter_logits(x, 0, 1e-6)) > L.NEG_INF / 2, [[1, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(np.asarray(jax.jit(L.filter_logits)(x, 0, 1.0)) > L.NEG_INF / 2, [[1] * 6])


@pytest.mark.parametrize("traced", [False, True])
def test_top_k_top_p_draws_match_the_filtered_distribution(traced):
  """Static and traced top_k: 20k draws against the exact temperature -> top-k -> top-p distribution of the numpy
  reference; greedy is the argmax."""
  logits = np.log(np.array([0.05, 0.3, 0.02, 0.2, 0.15, 0.1, 0.08, 0.09], np.float32))
  n, temperature, k, p = 20000, 0.9, 5, 0.8
  z = logits.astype(np.float64) / temperature
  probs = np.exp(np_top_p(np_top_k(z, k), p) - z.max())
  probs /= probs.sum()
  keys = jax.random.split(jax.random.PRNGKey(1), n)
  one = lambda key, kk: L.sample_categorical(key, jnp.asarray(logits)[None], temperature=temperature, top_k=kk,
                                             top_p=p)[0]
  if traced:
    draws = jax.jit(jax.vmap(one, in_axes=(0, None)))(keys, jnp.int32(k))
  else:
    draws = jax.vmap(lambda key: one(key, k))(keys)
  counts = np.bincount(np.asarray(draws), minlength=8)
  kept = probs > 0
  assert kept.sum() == 4 and counts[~kept].sum() == 0  # top-k keeps 5, the nucleus 4 of them
  assert stats.chisquare(counts[kept], probs[kept] * n).pvalue > 1e-3
  assert int(L.sample_categorical(keys[0], jnp.asarray(logits)[None], temperature=0.0, top_k=k, top_p=p)[0]) == 1
