"""Speculative decoding of next-token models against exact references on a toy model (V = 3 tokens, N = 4 positions):
SJD and drafter decoding (delta = 0) pass a chi-square test against the guided joint found by enumerating all 81
sequences with teacher-forced logits (accepting every draft fails it); greedy speculative decoding equals greedy
plain decoding; LANTERN's step distribution, computed exactly by an independent numpy enumeration, is within TV
delta of p, and the sampler matches it; rollback leaves the cache equal to one built from the accepted prefix."""
import itertools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from arjax import cache as cache_lib
from arjax.paradigms.next_token import NextToken
from arjax.sampling import speculative

V, GRID = 3, (2, 2)
N = GRID[0] * GRID[1]
CFG, LABEL, SAMPLES = 2.0, 1, 12000


def make(seed, width=16, codebook=None):
  """A tiny class-conditional next-token model with random weights (a random head, so logits depend on the prefix)."""
  cfg = ml_collections.ConfigDict(dict(name="next_token", num_classes=2, width=width, label_drop=0.1,
                                       transformer=dict(depth=1, heads=2, pos="rope2d", qk_norm=True, impl="xla")))
  tok_params = None if codebook is None else {"codebook": codebook}
  model = NextToken(cfg, types.SimpleNamespace(grid=GRID, vocab_size=V), tok_params)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(seed), None))
  noise = jax.random.split(jax.random.PRNGKey(seed + 100), len(jax.tree.leaves(params)))
  leaves = [p + 0.7 * jax.random.normal(k, p.shape) for p, k in zip(jax.tree.leaves(params), noise)]
  return model, jax.tree.unflatten(jax.tree.structure(params), leaves)


def guided_conditionals(model, params, tokens_BN):
  """Guided target probabilities [B, N, V] by teacher forcing (no cache): the independent reference."""
  b = tokens_BN.shape[0]
  logits = jax.jit(model.logits)
  cond = logits(params, {"label": jnp.full((b,), LABEL)}, tokens_BN)
  uncond = logits(params, {"label": jnp.full((b,), model.num_classes)}, tokens_BN)
  return np.asarray(jax.nn.softmax(uncond + CFG * (cond - uncond), axis=-1), np.float64)


def exact_joint(model, params):
  seqs = np.array(list(itertools.product(range(V), repeat=N)), np.int32)
  p = guided_conditionals(model, params, jnp.asarray(seqs))
  return seqs, np.prod(np.take_along_axis(p, seqs[..., None], -1)[..., 0], axis=1)


def chi2_pvalue(tokens_BN, seqs, joint):
  codes = tokens_BN @ (V ** np.arange(N)[::-1])
  observed = np.bincount(codes, minlength=len(seqs)).astype(float)
  expected = joint * len(tokens_BN)
  small = expected < 5  # pool sparse cells
  obs = np.append(observed[~small], observed[small].sum())
  exp = np.append(expected[~small], expected[small].sum())
  return stats.chisquare(obs, exp).pvalue


@pytest.fixture(scope="module")
def toy():
  model, params = make(0)
  drafter, dparams = make(1, width=8)
  return model, params, speculative.Drafter(drafter, dparams), exact_joint(model, params)


def decode(model, params, rng, b, **opts):
  tokens, st = model.decode(params, {"label": jnp.full((b,), LABEL)}, rng, cfg_scale=CFG, **opts)
  return np.asarray(tokens), jax.tree.map(np.asarray, st)


@pytest.mark.parametrize("decoding", ["sjd", "draft", "accept_every_draft"])
def test_lossless_chi_square_against_enumerated_joint(toy, decoding, monkeypatch):
  model, params, drafter, (seqs, joint) = toy
  opts = dict(decoding="sjd" if decoding == "sjd" else "draft", window=2)
  if decoding != "sjd":
    opts["drafter"] = drafter
  if decoding == "accept_every_draft":  # negative control (a fresh model instance forces a retrace)
    model = NextToken(model.cfg, model.tokenizer, None)
    monkeypatch.setattr(speculative.assd, "accept_prob", lambda target, q: jnp.ones_like(target))
  if decoding != "accept_every_draft":
    # greedy speculative decoding is greedy plain decoding (temperature is traced: the same compiled samplers)
    greedy, _ = decode(model, params, jax.random.PRNGKey(1), SAMPLES, temperature=0.0, **opts)
    plain, _ = decode(model, params, jax.random.PRNGKey(1), SAMPLES, temperature=0.0)
    np.testing.assert_array_equal(greedy, plain)
  tokens, st = decode(model, params, jax.random.PRNGKey(2), SAMPLES, **opts)
  p = chi2_pvalue(tokens, seqs, joint)
  if decoding == "accept_every_draft":
    assert p < 1e-6, p
    return
  assert p > 1e-3, p
  assert (st["nfe"] >= 1).all() and (st["nfe"] <= N).all() and st["nfe"].mean() < N  # some drafts accepted
  np.testing.assert_allclose(st["tokens_per_step"], N / st["nfe"], rtol=1e-6)
  assert (st["draft_nfe"] == (0 if decoding == "sjd" else 3 * st["nfe"])).all()


# ---- LANTERN: an independent numpy statement of the rule, enumerated exactly

def lantern_step_np(p, q, nbrs, delta):
  """(acceptance probability per draft, exact output distribution) of one relaxed verification step: draft x ~ q,
  accept with min(1, (p(x) + e(x)) / q(x)), else draw from norm(max(p - q, 0))."""
  v = len(p)
  m = np.zeros(v)
  for y in range(v):
    mass = 0.0
    for z in nbrs[y]:  # nearest first, while the cumulative neighbour mass stays <= delta
      if mass + p[z] > delta:
        break
      mass += p[z]
    m[y] = mass
  e = np.minimum(m, np.maximum(q - p, 0))
  e *= min(1.0, delta / e.sum()) if e.sum() > 0 else 1.0
  alpha = np.where(q > 0, np.minimum(1.0, (p + e) / np.where(q > 0, q, 1)), 0.0)
  r = np.maximum(p - q, 0)
  r = r / r.sum() if r.sum() > 0 else p
  out = [sum(q[x] * (alpha[x] * (x == y) + (1 - alpha[x]) * r[y]) for x in range(v)) for y in range(v)]
  return alpha, np.array(out)


def tv(a, b):
  return 0.5 * np.abs(a - b).sum()


def test_lantern_step_within_delta_and_sampler_matches_the_rule():
  rng = np.random.default_rng(0)
  for v, k in ((3, 2), (12, 4)):
    codebook = rng.normal(size=(v, 4))
    nbrs = np.asarray(speculative.neighbours(codebook, k))
    d = ((codebook[:, None] - codebook[None]) ** 2).sum(-1) + np.diag(np.full(v, np.inf))
    np.testing.assert_array_equal(nbrs, np.argsort(d, axis=-1)[:, :k])
    for _ in range(50):
      p, q = rng.dirichlet(np.full(v, 0.5)), rng.dirichlet(np.full(v, 0.5))
      for delta in (0.0, 0.05, 0.1, 0.2, 0.4):
        alpha, out = lantern_step_np(p, q, nbrs, delta)
        assert abs(out.sum() - 1) < 1e-9 and tv(out, p) <= delta + 1e-9
        extra = np.asarray(speculative.lantern_extra(jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32),
                                                     jnp.asarray(nbrs), delta)) if delta else 0.0
        np.testing.assert_allclose(np.minimum(1, (p + extra) / q), alpha, atol=1e-5)
  # the paper's per-candidate cut alone (no shared budget) can move more than delta: every draft accepted here
  p, q, delta = np.array([0.4, 0.1, 0.4, 0.1]), np.array([0.1, 0.4, 0.1, 0.4]), 0.4
  per_candidate = np.minimum(q, p + np.array([0.1, 0.4, 0.1, 0.4]))  # m(1) = p(0), m(3) = p(2), both <= delta
  assert tv(per_candidate, p) > delta
  assert tv(lantern_step_np(p, q, np.array([[1], [0], [3], [2]]), delta)[1], p) <= delta + 1e-12

  # the jitted verify draws from exactly that distribution (one position, many rows)
  p, q, delta = np.array([0.7, 0.12, 0.18]), np.array([0.2, 0.4, 0.4]), 0.2
  nbrs = np.array([[1, 2], [2, 0], [1, 0]], np.int32)
  rows = 40000
  k_draft, k_verify = jax.random.split(jax.random.PRNGKey(3))
  drafts = jax.random.categorical(k_draft, jnp.log(jnp.asarray(q, jnp.float32)), shape=(rows, 1))
  p_BLV = jnp.broadcast_to(jnp.asarray(p, jnp.float32), (rows, 2, 3))
  q_BWV = jnp.broadcast_to(jnp.asarray(q, jnp.float32), (rows, 1, 3))
  extra = speculative.lantern_extra(p_BLV[:, :1], q_BWV, jnp.asarray(nbrs), delta)
  a, new = jax.jit(speculative.verify)(k_verify, drafts, p_BLV, q_BWV, jnp.ones((rows,), jnp.int32), extra)
  out = np.where(np.asarray(a) == 1, np.asarray(drafts)[:, 0], np.asarray(new))
  expected = lantern_step_np(p, q, nbrs, delta)[1]
  assert tv(expected, p) == pytest.approx(delta)  # the relaxation is active, and cut by the shared budget
  assert stats.chisquare(np.bincount(out, minlength=3), expected * rows).pvalue > 1e-3


def test_lantern_in_the_decoder_first_token(toy):
  """The first token of SJD + LANTERN comes from a uniform draft: its marginal is the exact relaxed step of p_0."""
  model, params, _, _ = toy
  codebook = np.random.default_rng(1).normal(size=(V, 4)).astype(np.float32)
  model = NextToken(model.cfg, model.tokenizer, {"codebook": codebook})
  delta = 0.2
  tokens, st = decode(model, params, jax.random.PRNGKey(4), SAMPLES, decoding="sjd", window=2,
                      lantern_delta=delta, lantern_k=2)
  p0 = guided_conditionals(model, params, jnp.zeros((1, N), jnp.int32))[0, 0]
  unit = codebook / np.linalg.norm(codebook, axis=-1, keepdims=True)
  expected = lantern_step_np(p0, np.full(V, 1 / V), np.asarray(speculative.neighbours(unit, 2)), delta)[1]
  assert tv(expected, p0) <= delta + 1e-9
  assert stats.chisquare(np.bincount(tokens[:, 0], minlength=V), expected * SAMPLES).pvalue > 1e-3
  assert (st["nfe"] <= N).all()


def test_rollback_equals_cache_of_the_accepted_prefix(toy):
  """Feed [condition, 3 drafts] to every row, keep a per-row accepted prefix (truncate): each row's cache equals a
  one-row cache prefilled with only that prefix, and so do the logits of the next window fed through both."""
  model, params, _, _ = toy
  labels, keep = jnp.array([0, 1, 0]), np.array([1, 3, 2])  # accepted inputs per row
  seq = jnp.array([[2, 0, 1, 1], [1, 1, 0, 2], [0, 2, 2, 1]])  # input i > 0 feeds token i - 1
  forward = lambda cond: jax.jit(model.window_net(cond).forward)
  net = forward({"label": labels})
  zeros = jnp.zeros((3,), jnp.int32)
  empty = model.tcfg.init_cache(3, N + 4).replace(aligned=False)
  _, spec = net(params, empty, jnp.concatenate([zeros[:, None], seq[:, :3]], 1), zeros)
  spec = cache_lib.truncate(spec, jnp.asarray(keep))
  nxt = seq[np.arange(3), keep - 1][:, None]
  out_spec, _ = net(params, spec, jnp.concatenate([nxt, nxt], 1), jnp.asarray(keep))
  for b in range(3):
    one = forward({"label": labels[b:b + 1]})
    prefix = jnp.concatenate([jnp.zeros((1, 1), jnp.int32), seq[b:b + 1, :keep[b] - 1]], 1)
    _, ref = one(params, model.tcfg.init_cache(1, N + 4), prefix, jnp.zeros((1,), jnp.int32))  # aligned
    assert int(spec.end_B[b]) == int(ref.end_B[0]) == keep[b]
    np.testing.assert_array_equal(np.asarray(spec.pos_BS[b]), np.asarray(ref.pos_BS[0]))
    for a, r in zip(spec.k + spec.v, ref.k + ref.v):
      np.testing.assert_allclose(np.asarray(a[b, :, :keep[b]]), np.asarray(r[0, :, :keep[b]]), atol=1e-5)  # [B, G, S, D]
    out_ref, _ = one(params, ref.replace(aligned=False), jnp.concatenate([nxt[b:b + 1]] * 2, 1),
                             jnp.asarray([keep[b]]))
    np.testing.assert_allclose(np.asarray(out_spec[b]), np.asarray(out_ref[0]), atol=1e-5)


def test_bad_options_are_refused(toy):
  model, params, drafter, _ = toy
  cond = {"label": jnp.array([0])}
  for opts, match in ((dict(decoding="jacobi"), "decoding must be"), (dict(decoding="sjd", window=0), "window"),
                      (dict(decoding="draft"), "drafter"), (dict(decoding="sjd", lantern_delta=1.5), "lantern_delta"),
                      (dict(decoding="sjd", drafter=drafter), "drafter")):
    with pytest.raises(ValueError, match=match):
      model.decode(params, cond, jax.random.PRNGKey(0), **opts)
  with pytest.raises(ValueError, match="codebook"):
    model.decode(params, cond, jax.random.PRNGKey(0), decoding="sjd", lantern_delta=0.1, lantern_k=1)
