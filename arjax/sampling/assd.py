"""Any-subset speculative decoding (ASSD; Guo & Ermon 2025): exact parallel sampling from an any-subset AR model.

  tokens_BN, nfe_B = sample(logits_fn, tokens_BN, rank_BN, rng, draft_len=k)

`rank_BN` is 0 at the given positions and 1..M (a permutation, per row) in generation order at the others.
`logits_fn(tokens_BN, rank_BN) -> [B, N, V]` gives at row b, position i the logits of
p(x_i | {x_j : rank_j < rank_i}); tokens at positions whose rank is not below rank_i must not matter. One round:
  1. draft pass: the undecoded positions get a rank above every decoded one, so each sees only decoded tokens;
     the next `draft_len` tokens of the order are drawn independently from these conditionals (d);
  2. oracle pass: one call on the proposed sequence (drafts at their true ranks) gives the exact conditionals q;
  3. drafts are accepted in order with probability min(1, q/d); the first rejected one is redrawn from
     norm(max(q - d, 0)) and the round ends there.
The first draft's conditional is exact (it sees only decoded tokens in both passes), so it is always accepted:
a round of two calls decodes at least two tokens, and a round that drafts one token (`draft_len=1`, or one
token left in the row) skips the oracle. Hence, per row, nfe <= M. `draft_len=1` is the sequential sampler.
Rows advance together (one call serves the batch); `nfe_B` counts the calls made while each row was unfinished.
The output distribution is exactly prod_m p(x_sigma(m) | given, x_sigma(<m)) (tests/sampling/test_assd.py
checks it by enumerating every branch).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def accept_prob(q_BN, d_BN):
  """Probability of accepting a draft whose oracle / draft probabilities are q / d."""
  return jnp.minimum(1.0, q_BN / jnp.maximum(d_BN, 1e-30))


def check_ranks(rank_BN):
  """Raises ValueError unless every row's nonzero ranks are exactly 1..M (M may differ per row)."""
  rank_BN = np.asarray(rank_BN)
  if rank_BN.ndim != 2 or not np.issubdtype(rank_BN.dtype, np.integer):
    raise ValueError(f"rank_BN must be an int array [B, N], got {rank_BN.dtype} {rank_BN.shape}")
  for b, rank in enumerate(rank_BN):
    todo = np.sort(rank[rank != 0])
    if (rank < 0).any() or not np.array_equal(todo, np.arange(1, len(todo) + 1)):
      raise ValueError(f"rank_BN row {b} must be 0 at given positions and a permutation of 1..M elsewhere; "
                       f"got {rank.tolist()}")


def sample(logits_fn, tokens_BN, rank_BN, rng, *, draft_len: int):
  """(tokens [B, N] with every rank>0 position drawn, nfe [B] network calls per row); see the module docstring.

  jit-able; ranks are checked when they are concrete (under jit only if they are constants)."""
  if int(draft_len) != draft_len or draft_len < 1:
    raise ValueError(f"draft_len must be an int >= 1, got {draft_len!r}")
  draft_len = int(draft_len)
  if not isinstance(rank_BN, jax.core.Tracer):
    check_ranks(rank_BN)
  tokens_BN, rank_BN = jnp.asarray(tokens_BN, jnp.int32), jnp.asarray(rank_BN, jnp.int32)
  if tokens_BN.shape != rank_BN.shape:
    raise ValueError(f"tokens_BN {tokens_BN.shape} and rank_BN {rank_BN.shape} must have the same shape [B, N]")
  b, n = tokens_BN.shape
  total_B = rank_BN.max(axis=1)  # M per row

  def body(carry):
    tokens, done_B, nfe_B, rng = carry  # done_B: tokens decoded so far (ranks 1..done_B are final)
    rng, k_draft, k_accept, k_resample = jax.random.split(rng, 4)
    active_B = done_B < total_B
    offset_BN = rank_BN - done_B[:, None] - 1  # 0 for the next token in the order
    size_B = jnp.minimum(draft_len, total_B - done_B)  # tokens drafted this round
    draft_BN = (offset_BN >= 0) & (offset_BN < size_B[:, None])
    hidden_rank = jnp.where(rank_BN <= done_B[:, None], rank_BN, n + 1)  # undecoded: above all decoded
    d_logp = jax.nn.log_softmax(logits_fn(tokens, hidden_rank).astype(jnp.float32), axis=-1)
    drafted = jax.random.categorical(k_draft, d_logp, axis=-1).astype(jnp.int32)
    proposed = jnp.where(draft_BN, drafted, tokens)
    nfe_B = nfe_B + active_B

    def verify(_):
      """Accept drafts up to the first rejection; redraw that one from the residual."""
      q_logp = jax.nn.log_softmax(logits_fn(proposed, rank_BN).astype(jnp.float32), axis=-1)
      at = lambda logp: jnp.take_along_axis(logp, drafted[..., None], -1)[..., 0]
      ok_BN = jax.random.uniform(k_accept, (b, n)) < accept_prob(jnp.exp(at(q_logp)), jnp.exp(at(d_logp)))
      ok_BN = ok_BN | (offset_BN == 0)  # exact by the contract: float noise must not reject it
      reject_B = jnp.min(jnp.where(draft_BN & ~ok_BN, offset_BN, draft_len), axis=1)  # draft_len: none
      residual = jnp.maximum(jnp.exp(q_logp) - jnp.exp(d_logp), 0.0)
      residual = jnp.where(residual.sum(-1, keepdims=True) > 0, residual, jnp.exp(q_logp))
      redrawn = jax.random.categorical(k_resample, jnp.log(residual), axis=-1).astype(jnp.int32)
      new = jnp.where(offset_BN < reject_B[:, None], drafted, jnp.where(offset_BN == reject_B[:, None], redrawn, 0))
      return new, jnp.minimum(reject_B + 1, size_B)

    two_or_more = active_B & (size_B > 1)
    if draft_len == 1:
      new, step_B = drafted, size_B
    else:
      new, step_B = jax.lax.cond(jnp.any(two_or_more), verify, lambda _: (drafted, size_B), None)
    nfe_B = nfe_B + two_or_more
    step_B = jnp.where(active_B, step_B, 0)
    write_BN = (offset_BN >= 0) & (offset_BN < step_B[:, None])
    return jnp.where(write_BN, new, tokens), done_B + step_B, nfe_B, rng

  def cond(carry):
    return jnp.any(carry[1] < total_B)

  zeros = jnp.zeros((b,), jnp.int32)
  tokens_BN, _, nfe_B, _ = jax.lax.while_loop(cond, body, (tokens_BN, zeros, zeros, rng))
  return tokens_BN, nfe_B
