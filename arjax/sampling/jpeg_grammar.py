"""Constrained decoding of canonical JPEG streams (arjax.tokenizers.jpeg): masks every byte that cannot continue
a valid file, so that a sampled stream always decodes, and within a byte budget (max_len) always ends.

The tokens are the 256 byte values and EOS (= 256). A stream is: the fixed header; per MCU an entropy-coded
segment (its 8x8 blocks Huffman-coded with the tables in use, 0xFF data bytes followed by a stuffed 0x00, the
last byte padded with 1 bits); an RST marker FF D0+(m % 8) after MCU m, except after the last, which gets EOI
(FF D9); then EOS.

How: a bit-level DFA over the entropy-coded segment of one MCU, built from the DHT / SOF0 / SOS segments in use:
a state is (block of the MCU, coefficient index k, Huffman-trie node or extra bits still to read). A code that
is not in the table, an AC run past coefficient 63, or a 0 padding bit after the MCU's last block is the
absorbing INVALID state. Per sampled byte its 8 bits run through the DFA for all 256 candidates at once
(8 gathers of [B, 256]); the phases around it (header bytes, 0x00 after a 0xFF, marker bytes, EOS after EOI)
each allow one token. Budget: u_S[s] is the number of bytes (stuffing included) a fixed shortest-path policy
needs to close the segment from byte-aligned state s; a byte is allowed only if the file can still end (EOS
included) within max_len + 1 tokens after it. The policy's own next byte always passes, so every row ends.

Why a vectorised jnp automaton and not host-side numpy between jitted steps: it runs inside the sampler
skeleton's `lax.while_loop` (one compiled loop, per-row state, no device -> host sync per token), it is a few
gathers per step, and its tables (~65k states x 2 bits for 4:2:0 with the standard tables) are small constants.
`check` is the plain reference validator (a bit-by-bit Huffman decode, no DFA), used to judge files.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from arjax.tokenizers import jpeg

EOS = 256
VOCAB = 257  # 256 bytes + EOS
INVALID, DONE = 0, 1
HEADER, ECS, STUFF, MARK1, MARK2, END, FINISHED = range(7)
BITS_C8 = ((np.arange(256)[:, None] >> np.arange(7, -1, -1)) & 1).astype(np.int32)  # MSB first


def huffman_tables(dht: bytes) -> dict:
  """{(class 0=DC / 1=AC, id): {code string: symbol}} from DHT segments."""
  out, i = {}, 0
  while i < len(dht):
    length = int.from_bytes(dht[i + 2:i + 4], "big")
    seg, j = dht[i + 4:i + 2 + length], 0
    while j < len(seg):
      tc, th, counts = seg[j] >> 4, seg[j] & 15, list(seg[j + 1:j + 17])
      symbols, j = list(seg[j + 17:j + 17 + sum(counts)]), j + 17 + sum(counts)
      codes, code, n = {}, 0, 0
      for bits, count in enumerate(counts, 1):  # canonical Huffman codes (JPEG Annex C)
        for _ in range(count):
          codes[format(code, f"0{bits}b")] = symbols[n]
          code, n = code + 1, n + 1
        code <<= 1
      out[(tc, th)] = codes
    i += 2 + length
  return out


def frame(header: bytes):
  """(height, width, blocks of one MCU as [(dc table id, ac table id)], number of MCUs) from SOF0 + SOS."""
  segs = dict(jpeg.segments(header))
  sof, sos = segs[jpeg.SOF0], segs[0xDA]
  height, width, n = int.from_bytes(sof[5:7], "big"), int.from_bytes(sof[7:9], "big"), sof[9]
  sampling = {sof[10 + 3 * c]: (sof[11 + 3 * c] >> 4, sof[11 + 3 * c] & 15) for c in range(n)}
  hmax, vmax = max(h for h, _ in sampling.values()), max(v for _, v in sampling.values())
  blocks = []
  for c in range(sos[4]):
    cid, sel = sos[5 + 2 * c], sos[6 + 2 * c]
    h, v = sampling[cid]
    blocks += [(sel >> 4, sel & 15)] * (h * v)
  n_mcu = -(-height // (8 * vmax)) * -(-width // (8 * hmax))
  return height, width, blocks, n_mcu


def _trie(codes: dict):
  """child [nodes, 2] int: >= 0 an internal node, -1 a missing code, -(symbol + 2) a leaf."""
  child = [[-1, -1]]
  for code, sym in codes.items():
    node = 0
    for pos, bit in enumerate(map(int, code)):
      if pos == len(code) - 1:
        child[node][bit] = -(sym + 2)
      else:
        if child[node][bit] == -1:
          child.append([-1, -1])
          child[node][bit] = len(child) - 1
        node = child[node][bit]
  return np.asarray(child)


def _bit_dfa(huff: dict, blocks: list):
  """next_S2 [S, 2] int32 of the per-MCU bit DFA and its start state (block 0, DC trie root)."""
  ids = {("invalid",): INVALID, ("done",): DONE}
  sid = lambda key: ids.setdefault(key, len(ids))
  edges = {INVALID: (INVALID, INVALID), DONE: (INVALID, DONE)}  # after the last block: 1-bit padding only
  block_start = lambda j: DONE if j == len(blocks) else sid(("dc", j, 0))
  after_coef = lambda j, kn: block_start(j + 1) if kn == 64 else sid(("ac", j, kn, 0))
  extra = lambda key_fn, r, then: sid(key_fn(r)) if r > 0 else then
  for j, (td, ta) in enumerate(blocks):
    dc, ac = _trie(huff[(0, td)]), _trie(huff[(1, ta)])
    for node in range(len(dc)):
      edges[sid(("dc", j, node))] = tuple(_dc_target(dc[node, b], j, sid, after_coef) for b in (0, 1))
    for r in range(1, 12):
      nxt = extra(lambda r_: ("dcx", j, r_), r - 1, after_coef(j, 1))
      edges[sid(("dcx", j, r))] = (nxt, nxt)
    for k in range(1, 64):
      for node in range(len(ac)):
        edges[sid(("ac", j, k, node))] = tuple(_ac_target(ac[node, b], j, k, sid, block_start, after_coef)
                                               for b in (0, 1))
    for kn in range(2, 65):
      for r in range(1, 11):
        nxt = extra(lambda r_: ("acx", j, kn, r_), r - 1, after_coef(j, kn))
        edges[sid(("acx", j, kn, r))] = (nxt, nxt)
  next_S2 = np.full((len(ids), 2), INVALID, np.int32)
  for s, (a, b) in edges.items():
    next_S2[s] = (a, b)
  return next_S2, ids[("dc", 0, 0)]


def _dc_target(c, j, sid, after_coef):
  if c >= 0:
    return sid(("dc", j, int(c)))
  if c == -1:
    return INVALID
  size = -c - 2
  return sid(("dcx", j, size)) if 0 < size <= 11 else (after_coef(j, 1) if size == 0 else INVALID)


def _ac_target(c, j, k, sid, block_start, after_coef):
  if c >= 0:
    return sid(("ac", j, k, int(c)))
  if c == -1:
    return INVALID
  sym = -c - 2
  run, size = sym >> 4, sym & 15
  if sym == 0x00:  # EOB
    return block_start(j + 1)
  if size == 0:  # ZRL (16 zeros) or an undefined symbol
    return after_coef(j, k + 16) if sym == 0xF0 and k + 15 <= 63 else INVALID
  if k + run > 63:
    return INVALID
  return sid(("acx", j, k + run + 1, size))


def _policy_bytes(next_S2):
  """u_S [S]: bytes (0xFF stuffing included) that the shortest-path policy writes to close the MCU's segment
  from each byte-aligned state (INVALID: a large number)."""
  s_count = len(next_S2)
  big = 1 << 20
  dist = np.full(s_count, big, np.int64)
  dist[DONE] = 0
  while True:  # Bellman-Ford on a DAG (plus the DONE / INVALID self-loops): min bits to DONE
    new = np.minimum(dist, 1 + dist[next_S2].min(1))
    new[INVALID], new[DONE] = big, 0
    if np.array_equal(new, dist):
      break
    dist = new
  policy = np.argmin(dist[next_S2], axis=1)  # ties -> bit 0
  reach = dist < big
  steps = int(dist[reach].max())
  n_bytes = -(-steps // 8)
  bits = np.ones((s_count, max(n_bytes, 1) * 8), np.int64)  # padding bits are 1
  cur = np.arange(s_count)
  for t in range(steps):
    active = (t < dist)
    bits[:, t] = np.where(active, policy[cur], 1)
    cur = np.where(active, next_S2[cur, policy[cur]], cur)
  values = (bits.reshape(s_count, -1, 8) << np.arange(7, -1, -1)).sum(-1)
  used = np.arange(values.shape[1])[None] < -(-dist[:, None] // 8)
  u_S = (used * (1 + (values == 255))).sum(1)
  return np.where(reach, u_S, big).astype(np.int32)


class State(NamedTuple):
  """Per-row automaton state: phase, header index, bit-DFA state, MCU index, phase after a stuffed 0x00."""
  phase: jax.Array
  i: jax.Array
  s: jax.Array
  m: jax.Array
  after: jax.Array


class Grammar:
  """The constraint for canonical streams of one image size and quality, with a byte budget of max_len."""

  def __init__(self, height: int, width: int, quality: int = 25, max_len: int = 256):
    header = canonical_header(height, width, quality)
    self.header = np.frombuffer(header, np.uint8).astype(np.int32)
    _, _, blocks, self.n_mcu = frame(header)
    self.huff = huffman_tables(jpeg.tables(quality)[1])
    self.blocks = blocks
    self.next_S2, self.root = _bit_dfa(self.huff, blocks)
    self.u_S = _policy_bytes(self.next_S2)
    self.max_len = int(max_len)
    self.min_len = len(header) + self.n_mcu * (int(self.u_S[self.root]) + 2)
    if self.min_len > self.max_len:
      raise ValueError(f"max_len={max_len} is too short for a {height}x{width} JPEG: the shortest file has "
                       f"{self.min_len} bytes")

  def init(self, batch: int) -> State:
    z = jnp.zeros((batch,), jnp.int32)
    return State(phase=z + HEADER, i=z, s=z + self.root, m=z, after=z + ECS)

  def _rest(self, m_B):
    """Tokens after the current MCU's segment: its marker, the later MCUs with theirs, EOS."""
    return 3 + (self.n_mcu - 1 - m_B) * (int(self.u_S[self.root]) + 2)

  def _run_byte(self, s, bits_8):
    flat = jnp.asarray(self.next_S2.reshape(-1))  # 1-D gathers: a 2-D one here takes XLA ~30 s to compile
    for b in range(8):
      s = flat[2 * s + bits_8[..., b]]
    return s

  def mask(self, st: State, t) -> jax.Array:
    """bool [B, 257]: the tokens that can follow, given t bytes written so far."""
    b = st.phase.shape[0]
    s_BC = self._run_byte(jnp.broadcast_to(st.s[:, None], (b, 256)), jnp.asarray(BITS_C8)[None])
    ff_C = jnp.arange(256) == 0xFF
    tail_BC = ff_C + jnp.where(s_BC == DONE, 0, jnp.asarray(self.u_S)[s_BC])  # a 0xFF byte brings its 0x00
    cost_BC = 1 + tail_BC + self._rest(st.m)[:, None]
    ecs_BC = (s_BC != INVALID) & (cost_BC <= self.max_len + 1 - t)
    marker = jnp.where(st.m == self.n_mcu - 1, jpeg.EOI, 0xD0 + st.m % 8)
    forced = jnp.select([st.phase == HEADER, st.phase == STUFF, st.phase == MARK1, st.phase == MARK2,
                         st.phase == END],
                        [jnp.asarray(self.header)[jnp.minimum(st.i, len(self.header) - 1)], 0, 0xFF, marker, EOS], -1)
    allowed = jnp.arange(VOCAB)[None] == forced[:, None]
    ecs = jnp.concatenate([ecs_BC, jnp.zeros((b, 1), bool)], 1)
    return jnp.where((st.phase == ECS)[:, None], ecs, allowed)

  def advance(self, st: State, token_B) -> State:
    """The state after each row's token (assumed allowed by `mask`)."""
    s_new = self._run_byte(st.s, jnp.asarray(BITS_C8)[jnp.clip(token_B, 0, 255)])
    ended = s_new == DONE
    is_ff = token_B == 0xFF
    last = st.m == self.n_mcu - 1
    i = st.i + 1
    phase = jnp.select(
        [st.phase == HEADER, st.phase == ECS, st.phase == STUFF, st.phase == MARK1, st.phase == MARK2,
         st.phase == END],
        [jnp.where(i == len(self.header), ECS, HEADER), jnp.where(is_ff, STUFF, jnp.where(ended, MARK1, ECS)),
         st.after, MARK2, jnp.where(last, END, ECS), FINISHED], FINISHED)
    after = jnp.where(st.phase == ECS, jnp.where(ended, MARK1, ECS), st.after)
    s = jnp.where(st.phase == ECS, s_new, jnp.where(st.phase == MARK2, self.root, st.s))
    m = st.m + ((st.phase == MARK2) & ~last)
    return State(phase=phase, i=i, s=s, m=m, after=after)

  def scan(self, tokens_L):
    """Runs one token sequence through the automaton: (allowed [L, 257] before each token, final state)."""
    def body(st, xs):
      t, tok = xs
      allowed = self.mask(st, t)
      return self.advance(st, tok), allowed[0]
    tokens_L = jnp.asarray(tokens_L, jnp.int32)
    st, allowed = jax.lax.scan(body, self.init(1), (jnp.arange(len(tokens_L)), tokens_L[:, None]))
    return allowed, st


@functools.lru_cache(maxsize=None)
def canonical_header(height: int, width: int, quality: int = 25) -> bytes:
  """The header (SOI ... SOS) that every abbreviated stream of this size and quality starts with."""
  tokens = jpeg.encode(np.zeros((height, width, 3), np.uint8), quality)
  return b"".join(s for _, s in jpeg.segments(tokens.tobytes()))


@functools.lru_cache(maxsize=8)
def grammar(height: int, width: int, quality: int = 25, max_len: int = 256) -> Grammar:
  """The cached Grammar of one configuration."""
  return Grammar(height, width, quality, max_len)


def check(data: bytes, height: int, width: int, quality: int = 25) -> str | None:
  """Strict reference validator of a complete file (to_file's output): None if it is a canonical-grammar JPEG
  of the given size, else the first problem found. A plain bit-by-bit Huffman decode, independent of the DFA."""
  try:
    header = b"".join(s for _, s in jpeg.segments(data))
  except ValueError as e:
    return str(e)
  expected = jpeg.to_file(canonical_header(height, width, quality), quality)
  if header != expected:
    return "the header differs from the canonical one"
  h, w, blocks, n_mcu = frame(header)
  huff = huffman_tables(jpeg.tables(quality)[1])
  pos = len(header)
  for m in range(n_mcu):
    end = pos
    while end < len(data) and not (data[end] == 0xFF and end + 1 < len(data) and data[end + 1] != 0x00):
      end += 2 if data[end] == 0xFF else 1
    if end + 1 >= len(data):
      return f"MCU {m}: no marker after its entropy-coded segment"
    bits = "".join(format(x, "08b") for x in data[pos:end].replace(b"\xff\x00", b"\xff"))
    problem = _check_mcu(bits, blocks, huff)
    if problem:
      return f"MCU {m}: {problem}"
    want = jpeg.EOI if m == n_mcu - 1 else 0xD0 + m % 8
    if data[end + 1] != want:
      return f"MCU {m}: marker FF {data[end + 1]:02X}, expected FF {want:02X}"
    pos = end + 2
  return None if pos == len(data) else f"{len(data) - pos} bytes after EOI"


def _check_mcu(bits: str, blocks, huff) -> str | None:
  p = 0

  def symbol(codes):
    nonlocal p
    for n in range(1, 17):
      if bits[p:p + n] in codes and p + n <= len(bits):
        p += n
        return codes[bits[p - n:p]]
    return None

  for j, (td, ta) in enumerate(blocks):
    size = symbol(huff[(0, td)])
    if size is None or size > 11:
      return f"block {j}: bad DC code"
    p += size
    k = 1
    while k < 64:
      sym = symbol(huff[(1, ta)])
      if sym is None:
        return f"block {j}: bad AC code at coefficient {k}"
      run, size = sym >> 4, sym & 15
      if sym == 0:
        break
      if (size == 0 and sym != 0xF0) or k + run > 63 or (sym == 0xF0 and k + 15 > 63):
        return f"block {j}: AC symbol {sym:#04x} at coefficient {k}"
      p, k = p + size, k + run + 1
    if p > len(bits):
      return f"block {j}: the segment ends inside it"
  if len(bits) - p >= 8 or set(bits[p:]) - {"1"}:
    return "padding after the last block is not 1 bits within one byte"
  return None
