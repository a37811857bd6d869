"""The mask language: who may attend to whom, as small frozen hashable specs.

Every static spec gives three views of one mask:
  * `mask_fn(q_idx, kv_idx)`: elementwise bool from integer position arrays (numpy or traced
    jnp; only arithmetic and comparisons, so it lowers inside Pallas kernels).
  * `dense(q_len, kv_len, q_offset=0)`: bool [q_len, kv_len], built by an explicit
    construction independent of `mask_fn` (the reference the tests compare against).
  * `block_table(q_len, kv_len, block_q, block_k, q_offset=0)`: int8 [nq, nk], 0 empty,
    1 partial, 2 full, over the grid padded to block multiples (padding counts as masked).
    Computed from each block's position ranges (`_any_all`), never from the [q_len, kv_len] grid.
`q_offset` is the absolute position of the first query row (decoding against a cache).
`allowed(q_pos_BQ, k_pos_BK)` is the per-row view every spec has (the one `ranked`, a run-time
per-example spec, is limited to). Specs combine with `a | b` (union) and `a & b` (intersection).
Specs are JAX pytrees: static specs have no leaves, `ranked` holds its rank array.
"""
from __future__ import annotations

import dataclasses
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np

EMPTY, PARTIAL, FULL = 0, 1, 2


def _block_ids(idx, starts):
  """Index of the block containing idx, for static block start offsets (starts[0] == 0)."""
  out = idx * 0
  for s in starts[1:]:
    out = out + (idx >= s)
  return out


def _spec(*data_fields):
  """Frozen dataclass registered as a pytree whose leaves are `data_fields` (the rest is static)."""
  def wrap(cls):
    cls = dataclasses.dataclass(frozen=True)(cls)
    meta = [f.name for f in dataclasses.fields(cls) if f.name not in data_fields]
    return jax.tree_util.register_dataclass(cls, data_fields=list(data_fields), meta_fields=meta)
  return wrap


def _split(lo, hi, n):
  """Position ranges [lo, hi] cut at n: ((lo, hi, nonempty) below n, (lo, hi, nonempty) from n)."""
  below_hi, above_lo = np.minimum(hi, n - 1), np.maximum(lo, n)
  return (lo, below_hi, lo <= below_hi), (above_lo, hi, above_lo <= hi)


def _combine(parts):
  """(any, all) of a rectangle from its sub-rectangles' (nonempty, any, all)."""
  any_, all_ = False, True
  for nonempty, a, b in parts:
    any_ = any_ | (nonempty & a)
    all_ = all_ & (~nonempty | b)
  return any_, all_


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """Base class; static subclasses implement `mask_fn`, `_dense_abs` and `_any_all`."""
  is_runtime = False  # True where the mask depends on run-time data (no mask_fn, dense or static table)

  def mask_fn(self, q_idx, kv_idx):
    raise NotImplementedError

  def _dense_abs(self, q_pos: np.ndarray, kv_len: int) -> np.ndarray:
    """Reference mask for absolute query positions q_pos against keys [0, kv_len)."""
    raise NotImplementedError

  def _any_all(self, q_lo, q_hi, k_lo, k_hi):
    """(any, all): whether some / every pair in [q_lo, q_hi] x [k_lo, k_hi] is allowed (broadcast numpy).

    Ranges are inclusive absolute positions; empty ranges (lo > hi) may be passed and give anything.
    """
    raise NotImplementedError

  def __or__(self, other: MaskSpec) -> MaskSpec:
    return Union(self, other)

  def __and__(self, other: MaskSpec) -> MaskSpec:
    return Intersection(self, other)

  def allowed(self, q_pos_BQ, k_pos_BK):
    """bool [B, Q, K] for per-row sequence indices (traceable; a KV cache's slots carry their indices)."""
    return self.mask_fn(q_pos_BQ[:, :, None], k_pos_BK[:, None, :])

  def dense(self, q_len: int, kv_len: int, q_offset: int = 0) -> np.ndarray:
    q_pos = np.arange(q_len) + q_offset
    out = self._dense_abs(q_pos, kv_len)
    assert out.shape == (q_len, kv_len) and out.dtype == bool, (type(self), out.shape)
    return out

  def evaluate(self, q_len: int, kv_len: int, q_offset: int = 0) -> np.ndarray:
    """`mask_fn` on the whole grid, in numpy (what the kernels see)."""
    q = np.arange(q_len)[:, None] + q_offset
    k = np.arange(kv_len)[None, :]
    return np.broadcast_to(np.asarray(self.mask_fn(q, k), bool), (q_len, kv_len))

  def block_table(self, q_len: int, kv_len: int, block_q: int, block_k: int,
                  q_offset: int = 0) -> np.ndarray:
    """int8 [nq, nk] in O(nq * nk) host memory: each block decided from its position ranges."""
    nq, nk = math.ceil(q_len / block_q), math.ceil(kv_len / block_k)
    q_lo = np.arange(nq) * block_q
    q_hi = np.minimum(q_lo + block_q, q_len) - 1
    k_lo = np.arange(nk) * block_k
    k_hi = np.minimum(k_lo + block_k, kv_len) - 1
    any_, all_ = self._any_all((q_lo + q_offset)[:, None], (q_hi + q_offset)[:, None], k_lo[None, :], k_hi[None, :])
    padded = (q_hi - q_lo + 1 < block_q)[:, None] | (k_hi - k_lo + 1 < block_k)[None, :]
    return np.where(all_ & ~padded, FULL, np.where(any_, PARTIAL, EMPTY)).astype(np.int8)


@_spec()
class Full(MaskSpec):
  def mask_fn(self, q_idx, kv_idx):
    return (q_idx * 0 + kv_idx * 0) == 0

  def _dense_abs(self, q_pos, kv_len):
    return np.ones((len(q_pos), kv_len), bool)

  def _any_all(self, q_lo, q_hi, k_lo, k_hi):
    return True, True


@_spec()
class Causal(MaskSpec):
  def mask_fn(self, q_idx, kv_idx):
    return kv_idx <= q_idx

  def _dense_abs(self, q_pos, kv_len):
    return np.tril(np.ones((q_pos.max(initial=0) + 1, kv_len), bool))[q_pos] if len(q_pos) else (
        np.zeros((0, kv_len), bool))

  def _any_all(self, q_lo, q_hi, k_lo, k_hi):
    return k_lo <= q_hi, k_hi <= q_lo


@_spec()
class BlockCausal(MaskSpec):
  """Block b sees blocks <= b, bidirectional inside a block; sizes e.g. VAR's scale areas."""
  sizes: tuple[int, ...]

  @property
  def starts(self):
    return tuple(int(s) for s in np.cumsum((0,) + tuple(self.sizes[:-1])))

  def mask_fn(self, q_idx, kv_idx):
    return _block_ids(kv_idx, self.starts) <= _block_ids(q_idx, self.starts)

  def _dense_abs(self, q_pos, kv_len):
    total = sum(self.sizes)
    n = max(total, kv_len, q_pos.max(initial=0) + 1)
    ids = np.concatenate([np.full(s, b) for b, s in enumerate(self.sizes)] +
                         [np.full(n - total, len(self.sizes) - 1)])
    return ids[:kv_len][None, :] <= ids[q_pos][:, None]

  def _any_all(self, q_lo, q_hi, k_lo, k_hi):
    ids = lambda p: np.searchsorted(self.starts, p, side="right")  # block index + 1, monotone in p
    return ids(k_lo) <= ids(q_hi), ids(k_hi) <= ids(q_lo)


@_spec()
class SkipCausal(MaskSpec):
  """ACDiT's SCAM over [clean ; noised], each n_blocks blocks of `block` tokens.

  clean b sees clean <= b; noised b sees noised b and clean < b; clean never sees noised.
  """
  block: int
  n_blocks: int

  def mask_fn(self, q_idx, kv_idx):
    n = self.block * self.n_blocks
    q_noised, k_noised = q_idx >= n, kv_idx >= n
    qb = (q_idx - n * q_noised) // self.block
    kb = (kv_idx - n * k_noised) // self.block
    clean_q = ~q_noised & ~k_noised & (kb <= qb)
    noised_q = q_noised & ((k_noised & (kb == qb)) | (~k_noised & (kb < qb)))
    return clean_q | noised_q

  def _dense_abs(self, q_pos, kv_len):
    nb, b = self.n_blocks, self.block
    n = nb * b
    # noised blocks past n_blocks (positions beyond 2n) extend the same rule
    mb = max(nb, -(-(max(q_pos.max(initial=0) + 1, kv_len) - n) // b))
    eye = lambda r, c, k=0: np.kron(np.eye(r, c, k, dtype=bool), np.ones((b, b), bool))
    strict_lower = lambda r, c: np.kron(np.tril(np.ones((r, c), bool), -1), np.ones((b, b), bool))
    clean = np.concatenate([eye(nb, nb) | strict_lower(nb, nb), np.zeros((n, mb * b), bool)], 1)
    noised = np.concatenate([strict_lower(mb, nb), eye(mb, mb)], 1)
    return np.concatenate([clean, noised], 0)[q_pos][:, :kv_len]

  def _any_all(self, q_lo, q_hi, k_lo, k_hi):
    n, b = self.block * self.n_blocks, self.block
    (cq_lo, cq_hi, cq), (nq_lo, nq_hi, nq) = _split(q_lo, q_hi, n)
    (ck_lo, ck_hi, ck), (nk_lo, nk_hi, nk) = _split(k_lo, k_hi, n)
    cq_lo, cq_hi, ck_lo, ck_hi = cq_lo // b, cq_hi // b, ck_lo // b, ck_hi // b
    nq_lo, nq_hi, nk_lo, nk_hi = (nq_lo - n) // b, (nq_hi - n) // b, (nk_lo - n) // b, (nk_hi - n) // b
    single = (nq_lo == nq_hi) & (nk_lo == nk_hi) & (nq_lo == nk_lo)
    return _combine([
        (cq & ck, ck_lo <= cq_hi, ck_hi <= cq_lo),  # clean sees clean <= b
        (cq & nk, False, False),  # clean never sees noised
        (nq & nk, (nk_lo <= nq_hi) & (nq_lo <= nk_hi), single),  # noised sees its own block
        (nq & ck, ck_lo < nq_hi, ck_hi < nq_lo)])  # noised sees clean < b


@_spec()
class WindowSink(MaskSpec):
  """LongLive: block b sees block j iff j <= b and (j > b - window or j < sink)."""
  block: int
  window: int
  sink: int = 0

  def mask_fn(self, q_idx, kv_idx):
    qb, kb = q_idx // self.block, kv_idx // self.block
    return (kb <= qb) & ((kb > qb - self.window) | (kb < self.sink))

  def _dense_abs(self, q_pos, kv_len):
    out = np.zeros((len(q_pos), kv_len), bool)
    for r, q in enumerate(q_pos):
      qb = q // self.block
      visible = list(range(max(0, qb - self.window + 1), qb + 1)) + list(range(min(self.sink, qb + 1)))
      for j in set(visible):
        out[r, j * self.block:(j + 1) * self.block] = True
    return out

  def _any_all(self, q_lo, q_hi, k_lo, k_hi):
    qa, qb, ka, kb = q_lo // self.block, q_hi // self.block, k_lo // self.block, k_hi // self.block
    # block differences qb' - kb' cover [qa - kb, qb - ka]; visible iff 0 <= diff < window, or kb' < sink
    any_ = (ka <= qb) & ((qa - kb < self.window) | (ka < self.sink))
    all_ = (kb <= qa) & ((kb < self.sink) | (qb - np.maximum(ka, self.sink) < self.window))
    return any_, all_


@_spec()
class SkipWindowSink(MaskSpec):
  """Teacher forcing for window_sink (LongLive frame AR): SkipCausal over [clean ; noised] blocks where either
  copy of block b sees only clean blocks j with j > b - window or j < sink (and noised b itself)."""
  block: int
  n_blocks: int
  window: int
  sink: int = 0

  def _fold(self, idx):
    """(block index within its half, noised?) of positions (noised blocks past n_blocks extend the rule)."""
    n = self.block * self.n_blocks
    noised = idx >= n
    return (idx - n * noised) // self.block, noised

  def mask_fn(self, q_idx, kv_idx):
    (qb, _), (kb, _) = self._fold(q_idx), self._fold(kv_idx)
    near = (qb - kb < self.window) | (kb < self.sink)
    return SkipCausal(self.block, self.n_blocks).mask_fn(q_idx, kv_idx) & near

  def _dense_abs(self, q_pos, kv_len):
    fold = lambda p: np.where(p >= self.block * self.n_blocks, p - self.block * self.n_blocks, p) // self.block
    qb, kb = fold(q_pos)[:, None], fold(np.arange(kv_len))[None, :]
    return SkipCausal(self.block, self.n_blocks)._dense_abs(q_pos, kv_len) & ((qb - kb < self.window) |
                                                                              (kb < self.sink))

  def _any_all(self, q_lo, q_hi, k_lo, k_hi):
    n, b, w, s = self.block * self.n_blocks, self.block, self.window, self.sink
    (cq_lo, cq_hi, cq), (nq_lo, nq_hi, nq) = _split(q_lo, q_hi, n)
    (ck_lo, ck_hi, ck), (nk_lo, nk_hi, nk) = _split(k_lo, k_hi, n)
    cqa, cqb, cka, ckb = cq_lo // b, cq_hi // b, ck_lo // b, ck_hi // b
    nqa, nqb, nka, nkb = (nq_lo - n) // b, (nq_hi - n) // b, (nk_lo - n) // b, (nk_hi - n) // b

    def windowed(qa, qb, ka, kb, gap):  # clean keys at block distance >= gap (0: causal, 1: strictly before)
      any_ = ((ka <= qb - gap) & (ka < s)) | ((qa - kb < w) & (qb - ka >= gap) & (gap < w))
      all_ = (kb <= qa - gap) & ((kb < s) | (qb - np.maximum(ka, s) < w))
      return any_, all_

    single = (nqa == nqb) & (nka == nkb) & (nqa == nka)
    return _combine([
        (cq & ck, *windowed(cqa, cqb, cka, ckb, 0)),
        (cq & nk, False, False),  # clean never sees noised
        (nq & nk, (nka <= nqb) & (nqa <= nkb), single),  # noised sees its own block
        (nq & ck, *windowed(nqa, nqb, cka, ckb, 1))])


@_spec("inner")
class Prefix(MaskSpec):
  """Tokens < n see each other; all see them; the rest follow `inner` shifted by n."""
  n: int
  inner: MaskSpec

  @property
  def is_runtime(self):
    return self.inner.is_runtime

  def mask_fn(self, q_idx, kv_idx):
    in_q, in_k = q_idx < self.n, kv_idx < self.n
    rest = self.inner.mask_fn(q_idx - self.n, kv_idx - self.n)
    return in_k | (~in_q & ~in_k & rest)

  def _dense_abs(self, q_pos, kv_len):
    out = np.zeros((len(q_pos), kv_len), bool)
    out[:, :min(self.n, kv_len)] = True
    rows = q_pos >= self.n
    if rows.any() and kv_len > self.n:
      out[np.ix_(rows, np.arange(self.n, kv_len))] = self.inner._dense_abs(
          q_pos[rows] - self.n, kv_len - self.n)
    return out

  def _any_all(self, q_lo, q_hi, k_lo, k_hi):
    (_, _, pq), (rq_lo, rq_hi, rq) = _split(q_lo, q_hi, self.n)
    (_, _, pk), (rk_lo, rk_hi, rk) = _split(k_lo, k_hi, self.n)
    rest = self.inner._any_all(rq_lo - self.n, rq_hi - self.n, rk_lo - self.n, rk_hi - self.n)
    return _combine([(pk, True, True), (pq & rk, False, False), (rq & rk, *rest)])


@dataclasses.dataclass(frozen=True)
class _Combined(MaskSpec):
  """Two specs joined elementwise by `_op`; the block table applies `_op` to the children's (any, all)."""
  a: MaskSpec
  b: MaskSpec

  @property
  def is_runtime(self):
    return self.a.is_runtime or self.b.is_runtime

  def mask_fn(self, q_idx, kv_idx):
    return self._op(self.a.mask_fn(q_idx, kv_idx), self.b.mask_fn(q_idx, kv_idx))

  def allowed(self, q_pos_BQ, k_pos_BK):
    return self._op(self.a.allowed(q_pos_BQ, k_pos_BK), self.b.allowed(q_pos_BQ, k_pos_BK))

  def _dense_abs(self, q_pos, kv_len):
    return self._op(self.a._dense_abs(q_pos, kv_len), self.b._dense_abs(q_pos, kv_len))

  def _any_all(self, *ranges):
    (any_a, all_a), (any_b, all_b) = self.a._any_all(*ranges), self.b._any_all(*ranges)
    return self._op(any_a, any_b), self._op(all_a, all_b)


@_spec("a", "b")
class Union(_Combined):
  """a | b. Block table: full if either is full, empty if both are empty, else partial."""
  _op = staticmethod(operator.or_)


@_spec("a", "b")
class Intersection(_Combined):
  """a & b. Block table: empty if either is empty, full if both are full, else partial."""
  _op = staticmethod(operator.and_)


@_spec("rank_BN")
class Ranked(MaskSpec):
  """Run-time, per example: query i sees key j iff rank_BN[b, j] < rank_BN[b, i] (<= if inclusive).

  Served by `allowed`, `dense_batch` and a per-example `block_table(block_q, block_k)`; positions
  alone do not determine it, so `mask_fn` / `dense` raise (and the Pallas flash kernel cannot take it).
  Hashed and compared by identity (it holds an array).
  """
  rank_BN: jax.Array
  inclusive: bool = False
  __eq__, __hash__ = object.__eq__, object.__hash__
  is_runtime = True

  def _why(self, what):
    return TypeError(f"ranked masks are per example: {what} has no batch; use allowed(q_pos_BQ, k_pos_BK), "
                     "dense_batch() or block_table(block_q, block_k)")

  def mask_fn(self, q_idx, kv_idx):
    raise self._why("mask_fn(q_idx, kv_idx)")

  def _dense_abs(self, q_pos, kv_len):
    raise self._why("dense(q_len, kv_len)")

  def _any_all(self, q_lo, q_hi, k_lo, k_hi):
    raise self._why("a static block table")

  def _sees(self, q_rank, k_rank):
    return k_rank <= q_rank if self.inclusive else k_rank < q_rank

  def allowed(self, q_pos_BQ, k_pos_BK):
    """Ranks gathered at the (clipped) indices; callers mask k_pos < 0 (empty cache slots) themselves."""
    rank_BN = jnp.asarray(self.rank_BN)
    gather = lambda pos: jnp.take_along_axis(rank_BN, jnp.clip(pos, 0, rank_BN.shape[1] - 1), axis=1)
    return self._sees(gather(q_pos_BQ)[:, :, None], gather(k_pos_BK)[:, None, :])

  def dense_batch(self) -> np.ndarray:
    """bool [B, N, N] reference: query i sees the keys sorted before its rank (ties: strict excludes them)."""
    rank_BN = np.asarray(self.rank_BN)
    out = np.zeros(rank_BN.shape + rank_BN.shape[1:], bool)
    for b, rank in enumerate(rank_BN):
      order = np.argsort(rank, kind="stable")
      counts = np.searchsorted(rank[order], rank, side="right" if self.inclusive else "left")
      for i, count in enumerate(counts):
        out[b, i, order[:count]] = True
    return out

  def block_table(self, block_q: int, block_k: int) -> jax.Array:
    """int8 [B, nq, nk] over the padded [N, N] grid from per-block rank min / max (exact; jit-able)."""
    rank_BN = jnp.asarray(self.rank_BN)
    n = rank_BN.shape[1]

    def min_max(block):
      nb = -(-n // block)
      r = jnp.pad(rank_BN, ((0, 0), (0, nb * block - n)), mode="edge").reshape(-1, nb, block)
      return r.min(-1), r.max(-1), np.minimum(np.arange(1, nb + 1) * block, n) - np.arange(nb) * block < block

    q_min, q_max, q_pad = min_max(block_q)
    k_min, k_max, k_pad = min_max(block_k)
    some = self._sees(q_max[:, :, None], k_min[:, None, :])
    every = self._sees(q_min[:, :, None], k_max[:, None, :]) & ~(q_pad[:, None] | k_pad[None, :])
    return jnp.where(every, FULL, jnp.where(some, PARTIAL, EMPTY)).astype(jnp.int8)


def full() -> MaskSpec:
  return Full()


def causal() -> MaskSpec:
  return Causal()


def block_causal(sizes) -> MaskSpec:
  sizes = tuple(int(s) for s in sizes)
  if not sizes or min(sizes) <= 0:
    raise ValueError(f"block_causal sizes must be positive, got {sizes}")
  return BlockCausal(sizes)


def skip_causal(block: int, n_blocks: int) -> MaskSpec:
  if block <= 0 or n_blocks <= 0:
    raise ValueError(f"skip_causal needs block > 0 and n_blocks > 0, got {block}, {n_blocks}")
  return SkipCausal(int(block), int(n_blocks))


def window_sink(block: int, window: int, sink: int = 0) -> MaskSpec:
  if block <= 0 or window <= 0 or sink < 0:
    raise ValueError(f"window_sink needs block>0, window>0, sink>=0; got {block}, {window}, {sink}")
  return WindowSink(int(block), int(window), int(sink))


def skip_window_sink(block: int, n_blocks: int, window: int, sink: int = 0) -> MaskSpec:
  if block <= 0 or n_blocks <= 0 or window <= 0 or sink < 0:
    raise ValueError(f"skip_window_sink needs block>0, n_blocks>0, window>0, sink>=0; got {block}, {n_blocks}, "
                     f"{window}, {sink}")
  return SkipWindowSink(int(block), int(n_blocks), int(window), int(sink))


def prefix(n: int, inner: MaskSpec) -> MaskSpec:
  if n < 0:
    raise ValueError(f"prefix length must be >= 0, got {n}")
  return Prefix(int(n), inner)


def ranked(rank_BN, inclusive: bool = False) -> MaskSpec:
  """Per-example order mask from ranks [B, N] (e.g. the generation step of each position)."""
  rank_BN = jnp.asarray(rank_BN)
  if rank_BN.ndim != 2:
    raise ValueError(f"ranked needs ranks [B, N], got shape {rank_BN.shape}")
  return Ranked(rank_BN, bool(inclusive))
