"""Speculative decoding for raster next-token models: speculative Jacobi decoding (SJD), a small drafter, and
LANTERN's relaxed acceptance.

  tokens_BN, stats = decode(target, params, cond, rng, opts, drafter=None, neighbours_VK=None)
One `lax.while_loop` over verification rounds; rows advance by different amounts and keep their own KV-cache end
(cache v2: per-row `truncate`). A round, per row with n committed tokens:
  1. drafts d_0..d_{w-1} for positions n..n+w-1 with their proposal distributions q_j:
       'sjd'   the previous round's Jacobi iterate: at positions the previous pass already reached, a draw from its
               conditional there (given that pass's, possibly rejected, drafts); beyond, uniform random tokens;
       'draft' the drafter, token by token from its own KV cache (w + 1 drafter passes; the last one only caches d_{w-1});
  2. one target pass over [x_{n-1}, d_0..d_{w-1}] (w + 1 inputs, causal through the cache) gives the guided,
     filtered target distributions p_0..p_w;
  3. draft j is accepted with probability min(1, (p_j(d_j) + e_j(d_j)) / q_j(d_j)) up to the first rejection a; the
     token at n+a is drawn from norm(max(p_a - q_a, 0)) (from p_a when no draft was tested there: a = w, or the
     last position of the image), so a round commits a + 1 tokens; caches are truncated to n + a + 1.
e = 0 is lossless (tests/sampling/test_speculative.py checks the exact joint by enumeration). LANTERN (delta > 0):
e_j(x) is the target mass of x's latent neighbourhood B(x) (the k nearest codebook vectors, cut where their
cumulative target mass exceeds delta), counted only where q exceeds p and scaled by one factor per position so
that the extra accepted mass sums to <= delta: that makes the TV distance of every step's output from p at most
delta (see docs/speculative.md for why the paper's per-candidate cut alone does not bound it).
Guidance: target and draft distributions are the guided ones (guidance.combine on [cond ; uncond] rows).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from arjax import cache as cache_lib
from arjax.sampling import assd
from arjax.sampling import guidance as guidance_lib
from arjax.sampling import logits as logits_lib
from arjax.sampling import loop

DECODINGS = ("plain", "sjd", "draft")
# the speculative sampler options (beyond guidance.DEFAULTS); `drafter` is a Drafter for decoding='draft'
OPTIONS = dict(decoding="plain", window=8, lantern_delta=0.0, lantern_k=8, drafter=None)


class Net(NamedTuple):
  """A raster next-token net as the decoder sees it (the target, or a drafter)."""
  forward: Callable  # (params, cache, tokens_RL, start_R) -> (logits_RLV, cache): inputs at indices start_R + [0, L)
  init_cache: Callable  # (rows, length) -> an empty cache of `length` slots


class Drafter:
  """A drafter for decoding='draft': a next-token paradigm over the same tokens and its params (a static sampler
  option, hashed by identity; its params enter the compiled sampler as constants)."""

  def __init__(self, model, params):
    self.model, self.params = model, params


def check(opts: dict, vocab_size: int):
  """Raises ValueError for a bad combination of speculative options."""
  if opts["decoding"] not in DECODINGS:
    raise ValueError(f"decoding must be one of {DECODINGS}, got {opts['decoding']!r}")
  if int(opts["window"]) != opts["window"] or opts["window"] < 1:
    raise ValueError(f"window must be an int >= 1, got {opts['window']!r}")
  if not 0.0 <= opts["lantern_delta"] < 1.0:
    raise ValueError(f"lantern_delta must be in [0, 1), got {opts['lantern_delta']!r}")
  if opts["lantern_delta"] > 0 and not 1 <= opts["lantern_k"] < vocab_size:
    raise ValueError(f"lantern_k must be in [1, {vocab_size}) with lantern_delta > 0, got {opts['lantern_k']!r}")
  if (opts["decoding"] == "draft") != isinstance(opts["drafter"], Drafter):
    raise ValueError("decoding='draft' needs drafter=speculative.Drafter(model, params), and only it takes one; got "
                     f"decoding={opts['decoding']!r}, drafter={opts['drafter']!r}")


def neighbours(codebook_VD, k: int, chunk: int = 1024):
  """int32 [V, k]: each code's k nearest other codes (L2 in code space), nearest first (chunks of rows)."""
  c = jnp.asarray(codebook_VD, jnp.float32)
  v = c.shape[0]
  sq = (c * c).sum(-1)
  chunk = min(chunk, v)
  rows = jnp.minimum(jnp.arange(-(-v // chunk) * chunk), v - 1).reshape(-1, chunk)

  def nearest(rows_C):
    d = sq[rows_C, None] - 2 * jnp.dot(c[rows_C], c.T, precision=jax.lax.Precision.HIGHEST) + sq[None]
    return jax.lax.top_k(-jnp.where(rows_C[:, None] == jnp.arange(v), jnp.inf, d), k)[1]

  return jax.lax.map(nearest, rows).reshape(-1, k)[:v].astype(jnp.int32)


def probs(logits_NV, temperature=1.0, top_k=0, top_p=1.0):
  """The distribution logits.sample_categorical draws from: temperature, top-k, top-p (one-hot argmax at 0)."""
  x = logits_NV.astype(jnp.float32).reshape(-1, logits_NV.shape[-1])
  y = logits_lib.filter_logits(x / jnp.maximum(temperature, 1e-6), top_k, top_p)
  p = jax.nn.softmax(y, axis=-1)  # static top_k / top_p that keep everything skip their filters
  return jnp.where(temperature <= 0, jax.nn.one_hot(jnp.argmax(x, -1), x.shape[-1]), p).reshape(logits_NV.shape)


def draw(rng, p_NV):
  """One token per row of probabilities [..., V]."""
  return jax.random.categorical(rng, jnp.where(p_NV > 0, jnp.log(jnp.maximum(p_NV, 1e-38)), -jnp.inf)).astype(jnp.int32)


def residual(p_NV, q_NV):
  """norm(max(p - q, 0)); p itself where that is empty."""
  r = jnp.maximum(p_NV - q_NV, 0.0)
  return jnp.where(r.sum(-1, keepdims=True) > 0, r, p_NV)


def lantern_extra(p_NV, q_NV, neighbours_VK, delta):
  """LANTERN's extra acceptance mass per token [..., V]: e(y) = min(m(y), max(q(y) - p(y), 0)) with m(y) the target
  mass of y's nearest neighbours cut at cumulative mass <= delta; scaled per row so that sum_y e(y) <= delta."""
  cum = jnp.cumsum(p_NV[..., neighbours_VK], axis=-1)  # [..., V, k]
  m = jnp.max(jnp.where(cum <= delta, cum, 0.0), axis=-1)
  e = jnp.minimum(m, jnp.maximum(q_NV - p_NV, 0.0))
  return e * jnp.minimum(1.0, delta / jnp.maximum(e.sum(-1, keepdims=True), 1e-30))


def verify(rng, drafts_BW, p_BLV, q_BWV, limit_B, extra_BWV=None):
  """(accepted drafts a_B, the token at position a_B) for drafts d with proposals q against targets p
  (p_BLV: L = W + 1 positions, the last after every draft); at most limit_B drafts may be accepted."""
  b, w = drafts_BW.shape
  at = lambda x_BWV: jnp.take_along_axis(x_BWV, drafts_BW[..., None], -1)[..., 0]
  target = at(p_BLV[:, :w]) + (0.0 if extra_BWV is None else at(extra_BWV))
  k_accept, k_new = jax.random.split(rng)
  ok_BW = jax.random.uniform(k_accept, (b, w)) < assd.accept_prob(target, at(q_BWV))
  ok_BW &= jnp.arange(w) < limit_B[:, None]
  a_B = jnp.cumprod(ok_BW, axis=1).sum(1)
  rows = jnp.arange(b)
  tested_B = a_B < jnp.minimum(w, limit_B)  # the draft at a was tested and rejected
  q_a = jnp.where(tested_B[:, None], q_BWV[rows, jnp.minimum(a_B, w - 1)], 0.0)
  return a_B, draw(k_new, residual(p_BLV[rows, a_B], q_a))


def guided_probs(logits_RLV, idx_BL, n_tokens, guide, opts):
  """Guided (per position, by the CFG schedule at idx / (N - 1)) and filtered distributions [B, L, V]."""
  if guide.on:
    progress = idx_BL.astype(jnp.float32) / max(n_tokens - 1, 1)
    logits_RLV = guidance_lib.combine(logits_RLV, guide.at(progress)[..., None])
  return probs(logits_RLV, opts["temperature"], opts["top_k"], opts["top_p"])


def _drafts(drafter, dparams, cache, prev_B, n_B, rng, w, n_tokens, guide, opts):
  """(drafts [B, w], their proposals [B, w, V], drafter cache) from w + 1 one-token drafter passes."""

  def body(carry, key):
    cache, tok_B, j = carry
    logits, cache = drafter.forward(dparams, cache, guide.double(tok_B[:, None]), guide.double(n_B + j))
    q_BV = guided_probs(logits, (n_B + j)[:, None], n_tokens, guide, opts)[:, 0]
    x_B = draw(key, q_BV)
    return (cache, x_B, j + 1), (x_B, q_BV)

  (cache, _, _), (x_WB, q_WBV) = jax.lax.scan(body, (cache, prev_B, 0), jax.random.split(rng, w + 1))
  return x_WB[:w].T, q_WBV[:w].transpose(1, 0, 2), cache


def decode(target: Net, params, b: int, n_tokens: int, vocab: int, rng, opts: dict, drafter: Net = None,
           dparams=None, neighbours_VK=None):
  """(tokens [B, N], stats) by speculative decoding (see the module docstring); stats per row: nfe (target passes
  until the row was done), tokens_per_step (N / nfe), draft_nfe (drafter passes); rounds (loop iterations)."""
  guide, w, delta = loop.guidance(opts), int(opts["window"]), float(opts["lantern_delta"])
  rows = 2 * b if guide.on else b
  length = n_tokens + w + 1  # room for a window past the last token
  empty = lambda net: net.init_cache(rows, length).replace(aligned=False)
  rng, k0 = jax.random.split(rng)
  zeros = jnp.zeros((b,), jnp.int32)
  feed = dict(n=zeros, nfe=zeros, draft_nfe=zeros, rounds=jnp.zeros((), jnp.int32),
              drafts=jax.random.randint(k0, (b, w), 0, vocab), q=jnp.full((b, w, vocab), 1.0 / vocab))
  state = loop.init_state(out=jnp.zeros((b, length), jnp.int32), feed=feed,
                          cache=(empty(target), empty(drafter) if drafter else None), batch=b, rng=rng)
  rows_B = jnp.arange(b)

  def body(s: loop.State) -> loop.State:
    f, (tcache, dcache) = s.feed, s.cache
    rng, k_draft, k_verify, k_jacobi, k_random = jax.random.split(s.rng, 5)
    n_B = f["n"]
    prev_B = s.out[rows_B, jnp.maximum(n_B - 1, 0)]
    if drafter is None:
      drafts_BW, q_BWV = f["drafts"], f["q"]
    else:
      drafts_BW, q_BWV, dcache = _drafts(drafter, dparams, dcache, prev_B, n_B, k_draft, w, n_tokens, guide, opts)
    tokens_BL = jnp.concatenate([prev_B[:, None], drafts_BW], axis=1)
    logits, tcache = target.forward(params, tcache, guide.double(tokens_BL), guide.double(n_B))
    idx_BL = n_B[:, None] + jnp.arange(w + 1)
    p_BLV = guided_probs(logits, idx_BL, n_tokens, guide, opts)
    extra = lantern_extra(p_BLV[:, :w], q_BWV, neighbours_VK, delta) if delta > 0 else None
    a_B, new_B = verify(k_verify, drafts_BW, p_BLV, q_BWV, n_tokens - 1 - n_B, extra)
    # commit drafts [0, a) and the new token at a; finished rows keep everything
    j_L = jnp.arange(w + 1)
    vals_BL = jnp.where(j_L < a_B[:, None], jnp.pad(drafts_BW, ((0, 0), (0, 1))), new_B[:, None])
    write_BL = (j_L <= a_B[:, None]) & ~s.done_B[:, None]
    out = s.out.at[rows_B[:, None], idx_BL].set(jnp.where(write_BL, vals_BL, s.out[rows_B[:, None], idx_BL]))
    live_B = (~s.done_B).astype(jnp.int32)
    n_new = n_B + live_B * (a_B + 1)
    tcache = cache_lib.truncate(tcache, guide.double(n_new))
    dcache = None if dcache is None else cache_lib.truncate(dcache, guide.double(n_new))
    drafts, q = f["drafts"], f["q"]
    if drafter is None:  # SJD: the next window starts at n_new; where this pass reached, draw from its conditionals
      src_BW = a_B[:, None] + 1 + jnp.arange(w)
      reached_BW = src_BW <= w
      src_BW = jnp.minimum(src_BW, w)
      drafts = jnp.where(reached_BW, jnp.take_along_axis(draw(k_jacobi, p_BLV), src_BW, 1),
                         jax.random.randint(k_random, (b, w), 0, vocab))
      q = jnp.where(reached_BW[..., None], jnp.take_along_axis(p_BLV, src_BW[..., None], 1), 1.0 / vocab)
    feed = dict(n=n_new, nfe=f["nfe"] + live_B, draft_nfe=f["draft_nfe"] + live_B * (0 if drafter is None else w + 1),
                rounds=f["rounds"] + 1, drafts=drafts, q=q)
    return loop.State(out=out, feed=feed, cache=(tcache, dcache), done_B=n_new >= n_tokens, rng=rng)

  state = jax.lax.while_loop(lambda s: ~jnp.all(s.done_B), body, state)
  f = state.feed
  stats = dict(nfe=f["nfe"], tokens_per_step=n_tokens / jnp.maximum(f["nfe"], 1), draft_nfe=f["draft_nfe"],
               rounds=f["rounds"])
  return state.out[:, :n_tokens], stats
