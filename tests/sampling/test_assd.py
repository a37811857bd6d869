"""ASSD is exact: its output distribution, found by walking every draft / accept / reject branch in plain python,
equals the product of sequential conditionals; the jitted sampler passes a chi-square test against that product
(and an accept-every-draft sampler fails it); NFE <= number of generated tokens; bad input is refused."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from arjax.sampling import assd

V, N = 3, 5


def tiny_model(seed=0, scale=1.5):
  """A random any-subset model: logits_i = f(bias_i + sum_{j: rank_j < rank_i} W[i, j, x_j]) (contract by design)."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  bias_NV = scale * jax.random.normal(k1, (N, V))
  pair_NNVV = scale * jax.random.normal(k2, (N, N, V, V))  # [i, j, x_j, x_i]

  @jax.jit
  def logits_fn(tokens_BN, rank_BN):
    sees_BNN = (rank_BN[:, None, :] < rank_BN[:, :, None]).astype(jnp.float32)  # [b, i, j]
    h = bias_NV + jnp.einsum("bij,bjv,ijvw->biw", sees_BNN, jax.nn.one_hot(tokens_BN, V), pair_NNVV)
    return h + jnp.sin(2 * h)

  return logits_fn


MEMO = {}


def probs(logits_fn, tokens_N, rank_N):
  """softmax(logits_fn) [N, V] for one row, in float64 (memoised: branches revisit states)."""
  key = (id(logits_fn), np.asarray(tokens_N).tobytes(), np.asarray(rank_N).tobytes())
  if key not in MEMO:
    logits = np.asarray(logits_fn(jnp.asarray(tokens_N)[None], jnp.asarray(rank_N)[None])[0], np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    MEMO[key] = p / p.sum(-1, keepdims=True)
  return MEMO[key]


def sequential_distribution(logits_fn, tokens_N, rank_N):
  """{completion: prod_m p(x_sigma(m) | given, x_sigma(<m))}, one call per completion (all conditionals at once)."""
  todo = np.flatnonzero(rank_N > 0)
  out = {}
  for values in itertools.product(range(V), repeat=len(todo)):
    x = np.array(tokens_N)
    x[todo] = values
    p = probs(logits_fn, x, rank_N)
    out[tuple(x)] = float(np.prod(p[todo, values]))
  return out


def assd_distribution(logits_fn, tokens_N, rank_N, k):
  """Exact output distribution of ASSD, by recursion over every round's drafts and accept / reject outcomes."""
  m, out = int(rank_N.max()), {}

  def leaf(x, p):
    out[tuple(x)] = out.get(tuple(x), 0.0) + p

  def round_(x, done, p):
    if done == m:
      return leaf(x, p)
    todo = [int(np.flatnonzero(rank_N == done + 1 + j)[0]) for j in range(min(k, m - done))]
    d = probs(logits_fn, x, np.where(rank_N <= done, rank_N, N + 1))
    if len(todo) == 1:  # no oracle pass: the draft is the exact conditional
      for y in range(V):
        round_(np.where(np.arange(N) == todo[0], y, x), done + 1, p * d[todo[0], y])
      return
    for draft in itertools.product(range(V), repeat=len(todo)):
      proposed = np.array(x)
      proposed[todo] = draft
      q = probs(logits_fn, proposed, rank_N)
      np.testing.assert_allclose(q[todo[0]], d[todo[0]], atol=1e-6)  # the first draft's conditional is exact
      reach = p * np.prod(d[todo, draft])  # probability of this draft
      for j, pos in enumerate(todo):
        accept = 1.0 if j == 0 else min(1.0, q[pos, draft[j]] / d[pos, draft[j]])
        if accept < 1.0:
          residual = np.maximum(q[pos] - d[pos], 0.0)
          residual /= residual.sum()
          for y in range(V):
            rejected = np.array(proposed)
            rejected[todo[j:]] = x[todo[j:]]
            rejected[pos] = y
            round_(rejected, done + j + 1, reach * (1.0 - accept) * residual[y])
        reach *= accept
      round_(proposed, done + len(todo), reach)

  round_(np.asarray(tokens_N), 0, 1.0)
  return out


CASES = [  # (tokens (given values where rank is 0), ranks)
    (np.zeros(N, int), np.array([1, 2, 3, 4, 5])),
    (np.array([0, 2, 0, 1, 0]), np.array([3, 0, 1, 0, 2])),
    (np.array([1, 0, 0, 0, 0]), np.array([0, 4, 2, 1, 3])),
]


@pytest.mark.parametrize("case,k", [(0, 1), (0, 2), (0, 3), (0, 5), (1, 2), (1, 3), (2, 2), (2, 4)])
def test_assd_distribution_equals_sequential_product(case, k):
  logits_fn = tiny_model()
  tokens, ranks = CASES[case]
  want = sequential_distribution(logits_fn, tokens, ranks)
  got = assd_distribution(logits_fn, tokens, ranks, k)
  assert set(got) == set(want)
  assert abs(sum(got.values()) - 1.0) < 1e-9
  np.testing.assert_allclose([got[x] for x in want], list(want.values()), rtol=0, atol=1e-6)


def chi_square_pvalue(samples_BN, want):
  keys = list(want)
  index = {x: i for i, x in enumerate(keys)}
  counts = np.bincount([index[tuple(x)] for x in samples_BN], minlength=len(keys))
  return stats.chisquare(counts, np.array([want[x] for x in keys]) * len(samples_BN)).pvalue


def run_sampler(logits_fn, tokens_BN, rank_BN, k, seed=0):
  return jax.jit(lambda rng: assd.sample(logits_fn, tokens_BN, rank_BN, rng, draft_len=k))(jax.random.PRNGKey(seed))


def test_jitted_sampler_chi_square_and_nfe(monkeypatch):
  """Two orders in one batch (per-row ranks, different M); an accept-every-draft sampler fails the same test."""
  logits_fn = tiny_model()
  rows = 6000
  tokens_BN = np.repeat(np.stack([CASES[0][0], CASES[2][0]]), rows, 0)
  rank_BN = np.repeat(np.stack([CASES[0][1], CASES[2][1]]), rows, 0)
  wants = [sequential_distribution(logits_fn, *CASES[c]) for c in (0, 2)]
  for k in (1, 3):
    samples, nfe = map(np.asarray, run_sampler(logits_fn, tokens_BN, rank_BN, k))
    assert (nfe <= rank_BN.max(1)).all() and nfe.min() >= 1, np.unique(nfe)
    if k == 1:
      np.testing.assert_array_equal(nfe, rank_BN.max(1))  # the sequential sampler: one call per token
    for half, want in enumerate(wants):
      p = chi_square_pvalue(samples[half * rows:(half + 1) * rows], want)
      assert p > 1e-4, (k, half, p)
  monkeypatch.setattr(assd, "accept_prob", lambda q, d: jnp.ones_like(q))
  samples, _ = map(np.asarray, run_sampler(logits_fn, tokens_BN, rank_BN, 3))
  assert chi_square_pvalue(samples[:rows], wants[0]) < 1e-6


def test_nfe_counts_only_unfinished_rows():
  logits_fn = tiny_model(seed=1)
  rank_BN = np.array([[1, 2, 3, 4, 5], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0], [2, 1, 0, 0, 0]])
  for k in (1, 3):
    _, nfe = run_sampler(logits_fn, np.zeros_like(rank_BN), rank_BN, k)
    nfe = np.asarray(nfe)
    assert nfe[1] == 1 and nfe[2] == 0 and (nfe <= rank_BN.max(1)).all(), (k, nfe)


def test_given_tokens_are_kept():
  tokens = np.array([[2, 1, 0, 2, 1]])
  out, _ = run_sampler(tiny_model(), tokens, np.array([[0, 2, 0, 1, 0]]), 2)
  np.testing.assert_array_equal(np.asarray(out)[0, [0, 2, 4]], tokens[0, [0, 2, 4]])


@pytest.mark.parametrize("ranks", [[0, 1, 1, 3, 0], [0, 2, 3, 0, 0], [0, -1, 1, 2, 3], [1, 2, 3, 4, 6]])
def test_bad_ranks_are_refused(ranks):
  with pytest.raises(ValueError, match="permutation of 1..M"):
    assd.sample(tiny_model(), np.zeros((1, N), int), np.array([ranks]), jax.random.PRNGKey(0), draft_len=2)


@pytest.mark.parametrize("draft_len", [0, -1, 1.5])
def test_bad_draft_len_is_refused(draft_len):
  with pytest.raises(ValueError, match="draft_len"):
    assd.sample(tiny_model(), np.zeros((1, N), int), np.array([[1, 2, 3, 4, 5]]), jax.random.PRNGKey(0),
                draft_len=draft_len)
