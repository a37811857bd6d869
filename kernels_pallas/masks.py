"""The mask language: who may attend to whom, as small frozen hashable specs.

Every spec gives three views of one mask:
  * `mask_fn(q_idx, kv_idx)`: elementwise bool from integer position arrays (numpy or traced
    jnp; only arithmetic and comparisons, so it lowers inside Pallas kernels).
  * `dense(q_len, kv_len, q_offset=0)`: bool [q_len, kv_len], built by an explicit
    construction independent of `mask_fn` (the reference the tests compare against).
  * `block_table(q_len, kv_len, block_q, block_k, q_offset=0)`: int8 [nq, nk], 0 empty,
    1 partial, 2 full, over the grid padded to block multiples (padding counts as masked).
`q_offset` is the absolute position of the first query row (decoding against a cache).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

EMPTY, PARTIAL, FULL = 0, 1, 2


def _block_ids(idx, starts):
  """Index of the block containing idx, for static block start offsets (starts[0] == 0)."""
  out = idx * 0
  for s in starts[1:]:
    out = out + (idx >= s)
  return out


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """Base class; subclasses implement `mask_fn` and `_dense_abs`."""

  def mask_fn(self, q_idx, kv_idx):
    raise NotImplementedError

  def _dense_abs(self, q_pos: np.ndarray, kv_len: int) -> np.ndarray:
    """Reference mask for absolute query positions q_pos against keys [0, kv_len)."""
    raise NotImplementedError

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
    nq, nk = math.ceil(q_len / block_q), math.ceil(kv_len / block_k)
    m = np.zeros((nq * block_q, nk * block_k), bool)
    m[:q_len, :kv_len] = self.evaluate(q_len, kv_len, q_offset)
    m = m.reshape(nq, block_q, nk, block_k)
    any_ = m.any(axis=(1, 3))
    all_ = m.all(axis=(1, 3))
    return np.where(all_, FULL, np.where(any_, PARTIAL, EMPTY)).astype(np.int8)


@dataclasses.dataclass(frozen=True)
class Full(MaskSpec):
  def mask_fn(self, q_idx, kv_idx):
    return (q_idx * 0 + kv_idx * 0) == 0

  def _dense_abs(self, q_pos, kv_len):
    return np.ones((len(q_pos), kv_len), bool)


@dataclasses.dataclass(frozen=True)
class Causal(MaskSpec):
  def mask_fn(self, q_idx, kv_idx):
    return kv_idx <= q_idx

  def _dense_abs(self, q_pos, kv_len):
    return np.tril(np.ones((q_pos.max(initial=0) + 1, kv_len), bool))[q_pos] if len(q_pos) else (
        np.zeros((0, kv_len), bool))


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class Prefix(MaskSpec):
  """Tokens < n see each other; all see them; the rest follow `inner` shifted by n."""
  n: int
  inner: MaskSpec

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


def prefix(n: int, inner: MaskSpec) -> MaskSpec:
  if n < 0:
    raise ValueError(f"prefix length must be >= 0, got {n}")
  return Prefix(int(n), inner)
