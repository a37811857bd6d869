"""JPEG-LM: a class-conditional byte-level causal LM over canonical JPEG streams (arjax.tokenizers.jpeg).

No learned tokenizer: an image is the abbreviated JPEG stream Pillow writes at a fixed quality (4:2:0, baseline,
an RST marker between MCUs). Vocabulary: the 256 byte values, EOS (256), BOS (257), PAD (258), plus the
conditioning tokens (the Conditioner's class table: num_classes + the null class of CFG). A sequence is
  inputs  [cond, BOS, b_0, ..., b_{n-1}, EOS, PAD, ...]   (length max_len + 2, the last input dropped)
  targets [BOS,  b_0, ..., b_{n-1}, EOS, PAD, ...]
under a causal mask with 1D RoPE; the loss is over the bytes and EOS (padding and the BOS target are masked).
The network is next-token's NextTokenNet (condition vector first, token embeddings, Transformer, a
linear head) over these 259 ids. Files are variable length: preprocess JPEG-encodes the batch on the host
(jax.pure_callback, since the trainer jits preprocess) and pads it; sampling stops each row at its EOS.

Sampling is the sampler skeleton over max_len + 2 one-token units with a KV cache; a prompt (the header, or a real
file's bytes up to its n-th RST marker: prefix completion) is forced token by token. With `constrained=True`
(default) arjax.sampling.jpeg_grammar masks every byte that cannot continue a valid stream within max_len, so
every file decodes, even from random weights; `constrained=False` samples the raw model (BOS / PAD are never
drawn), and files that do not decode come back from `sample` as mid-grey images.
"""
from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from arjax.nn.transformer import TransformerConfig
from arjax.paradigms import base
from arjax.paradigms.next_token import NextTokenNet
from arjax.sampling import guidance as guidance_lib
from arjax.sampling import jpeg_grammar
from arjax.sampling import logits as logits_lib
from arjax.sampling import loop
from arjax.tokenizers import jpeg

KEYS = ("width", "transformer", "image_size", "quality", "max_len")  # beyond base.COND_KEYS
EOS, BOS, PAD = jpeg_grammar.EOS, 257, 258
VOCAB = 259


def encode_batch(images_BHW3, quality: int, max_len: int) -> np.ndarray:
  """Images in [-1, 1] -> int32 [B, max_len + 2] rows [BOS, bytes, EOS, PAD...] (host side)."""
  pixels = np.clip(np.rint((np.asarray(images_BHW3, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
  out = np.full((len(pixels), max_len + 2), PAD, np.int32)
  for b, image in enumerate(pixels):
    data = jpeg.encode(image, quality)
    if len(data) > max_len:
      raise ValueError(f"a JPEG stream of {len(data)} bytes exceeds model.max_len={max_len}; raise max_len")
    out[b, 0], out[b, 1:len(data) + 1], out[b, len(data) + 1] = BOS, data, EOS
  return out


def prefix(tokens, n: int) -> np.ndarray:
  """The bytes of a stream up to and including its n-th RST marker (n = 0: the header alone)."""
  data = np.asarray(tokens, np.uint8)
  header = sum(len(s) for _, s in jpeg.segments(data.tobytes()))
  if n == 0:
    return data[:header]
  hits = np.flatnonzero((data[header:-1] == 0xFF) & (data[header + 1:] >= 0xD0) & (data[header + 1:] <= 0xD7))
  if not 0 <= n <= len(hits):
    raise ValueError(f"n={n}: this stream has {len(hits)} restart markers")
  return data[:header + hits[n - 1] + 2]


class JpegLM(base.Paradigm):
  """The JPEG-LM paradigm (an arjax.interfaces.Paradigm)."""

  def __init__(self, cfg, tokenizer=None, tokenizer_params=None):
    super().__init__(cfg, tokenizer, tokenizer_params, KEYS)
    self.image_size = int(cfg.get("image_size", 32))
    self.quality = int(cfg.get("quality", 25))
    self.max_len = int(cfg.get("max_len", 256))
    if cfg.transformer.get("pos", "rope1d") != "rope1d":
      raise ValueError(f"model.transformer.pos must be 'rope1d' for JPEG-LM, got {cfg.transformer.pos!r}")
    jpeg._check_quality(self.quality)
    self.grammar = jpeg_grammar.grammar(self.image_size, self.image_size, self.quality, self.max_len)
    self.length = self.max_len + 2  # BOS, max_len bytes, EOS
    self.tcfg = TransformerConfig.make(cfg.transformer, width=cfg.width, max_len=self.length, pos="rope1d")
    self.net = NextTokenNet(VOCAB, self.conditioner, self.tcfg)
    self.positions = jnp.arange(self.length)

  def preprocess(self, batch):
    """Images -> JPEG token rows [B, max_len + 2] (host-side Pillow through a callback); conditions pass."""
    images = batch["image"]
    shape = jax.ShapeDtypeStruct((images.shape[0], self.length), jnp.int32)
    tokens = jax.pure_callback(lambda x: encode_batch(x, self.quality, self.max_len), shape, images)
    return dict(self.conditioner.from_batch(batch), tokens=tokens)

  def _apply(self, params, fn, *args, **kw):
    return self.net.apply({"params": params}, *args, method=fn, **kw)

  def logits(self, params, cond, tokens_BT):
    """Teacher-forced logits [B, T, 259]; position i predicts tokens[i]."""
    return self._apply(params, lambda m: m(m.inputs(cond, tokens_BT[:, :-1]), self.positions)[0])

  def init(self, rng, batch=None):
    cond = self.conditioner.example(1)
    tokens = jnp.full((1, self.length), PAD, jnp.int32)
    return self.net.init(rng, method=lambda m: m(m.inputs(cond, tokens[:, :-1]), self.positions))["params"]

  def _nll(self, params, cond, tokens_BT):
    """Per-position NLL [B, T] and its mask (bytes and EOS; not BOS or padding)."""
    nll = logits_lib.token_nll(self.logits(params, cond, tokens_BT), tokens_BT)
    keep = (tokens_BT != PAD) & (tokens_BT != BOS)
    return nll * keep, keep

  def loss(self, params, batch, rng, train=True):
    cond = self.conditioner.from_batch(batch)
    cond = self.conditioner.drop(cond, rng) if train else cond
    nll, keep = self._nll(params, cond, batch["tokens"])
    mean = nll.sum() / jnp.maximum(keep.sum(), 1)
    return mean, dict(nll=mean, bytes_per_image=keep.sum(1).mean() - 1)

  def nll(self, params, batch):
    """Per-example summed NLL (nats) of the file's bytes and EOS given the condition."""
    return self._nll(params, self.conditioner.from_batch(batch), batch["tokens"])[0].sum(-1)

  # ---- sampling: the skeleton's forward / sample / commit; feed = (cond, previous token, grammar state, prompt)

  def _forward(self, params, state, unit, constrained):
    cond, token_B, gstate, _ = state.feed
    pos = jax.lax.dynamic_slice_in_dim(self.positions, unit.start, 1)
    logits, cache = self._apply(params, lambda m: m(m.step_input(cond, token_B, unit.index == 0), pos,
                                                    cache=state.cache))
    b = gstate.phase.shape[0]
    allowed_BV = (self.grammar.mask(gstate, unit.start - 1) if constrained
                  else jnp.ones((b, jpeg_grammar.VOCAB), bool))
    allowed_BV = jnp.concatenate([allowed_BV, jnp.zeros((b, VOCAB - jpeg_grammar.VOCAB), bool)], 1)  # BOS, PAD
    return (logits[:, 0], allowed_BV), cache

  def _draw(self, params, feat, scale, unit, rng, opts):
    logits_NV, allowed_BV = feat
    if scale is not None:
      logits_NV = guidance_lib.combine(logits_NV, scale)
    return logits_lib.draw(rng, jnp.where(allowed_BV, logits_NV, logits_lib.NEG_INF), **opts)

  def _commit(self, state, x_B, unit):
    cond, token, gstate, (prompt_BT, prompt_len_B) = state.feed
    x_B = jnp.where(unit.start < prompt_len_B, prompt_BT[:, unit.start], x_B)
    gstate = jax.tree.map(lambda new, old: jnp.where(unit.start > 0, new, old), self.grammar.advance(gstate, x_B),
                          gstate)
    token = jnp.tile(x_B, token.shape[0] // x_B.shape[0])  # the guided batch feeds both halves
    return state.out.at[:, unit.start].set(x_B), (cond, token, gstate, (prompt_BT, prompt_len_B)), x_B == EOS

  @loop.sampler(extra=dict(constrained=True))
  def sample_tokens(self, params, cond, rng, opts):
    """Token rows [B, max_len + 2] ([BOS, bytes, EOS, PAD...]). `cond` holds the condition and may hold
    'prompt' int [B, P] with 'prompt_len' [B]: tokens forced from position 0 (BOS included)."""
    cond = dict(cond)
    b = self.conditioner.batch_size(cond)
    prompt_BT = jnp.full((b, self.length), PAD, jnp.int32).at[:, 0].set(BOS)
    prompt_len_B = jnp.ones((b,), jnp.int32)
    if "prompt" in cond:
      p = jnp.asarray(cond.pop("prompt"), jnp.int32)
      prompt_BT = prompt_BT.at[:, :p.shape[1]].set(p)
      prompt_len_B = jnp.asarray(cond.pop("prompt_len"), jnp.int32)
    guide = loop.guidance(opts)
    cond = self.conditioner.double(cond) if guide.on else cond
    rows = self.conditioner.batch_size(cond)
    feed = (cond, jnp.zeros((rows,), jnp.int32), self.grammar.init(b), (prompt_BT, prompt_len_B))
    state = loop.init_state(out=jnp.full((b, self.length), PAD, jnp.int32), feed=feed,
                            cache=self.tcfg.init_cache(rows, self.length), batch=b, rng=rng)
    constrained = opts.pop("constrained")
    steps = loop.Steps(lambda *a: self._forward(*a, constrained), lambda *a: self._draw(*a, opts), self._commit,
                       fed_at_start=True)  # byte k's feed at slot k
    return loop.run(steps, params, [1] * self.length, state, guide).out

  def _prompts(self, prompts, b):
    """A list of byte arrays (each a valid stream prefix) -> cond entries prompt [B, P] / prompt_len [B]."""
    if len(prompts) != b:
      raise ValueError(f"got {len(prompts)} prompts for {b} conditions")
    rows = [np.concatenate([[BOS], np.asarray(p, np.uint8)]).astype(np.int32) for p in prompts]
    longest = max(len(r) for r in rows)
    if longest > self.max_len:
      raise ValueError(f"a prompt of {longest - 1} bytes leaves no room within model.max_len={self.max_len}")
    out = np.full((b, longest), PAD, np.int32)
    for i, r in enumerate(rows):
      out[i, :len(r)] = r
    return dict(prompt=out, prompt_len=np.asarray([len(r) for r in rows], np.int32))

  def sample_files(self, params, label_B, rng, prompts=None, **opts) -> list[bytes]:
    """Complete JPEG files, one per label; `prompts` (optional) are stream prefixes to complete
    (e.g. `prefix(encode(image), n)`)."""
    label_B = np.asarray(label_B, np.int32)
    if label_B.ndim != 1:
      raise ValueError(f"label_B must be int [B], got shape {label_B.shape}")
    cond = {self.conditioner.key: label_B}
    if prompts is not None:
      cond.update(self._prompts(prompts, len(label_B)))
    tokens_BT = np.asarray(self.sample_tokens(params, cond, rng, **opts))
    return [self._file(row) for row in tokens_BT[:, 1:]]

  def _file(self, row) -> bytes:
    """The bytes before EOS as a complete file (a stream whose header is broken, unconstrained, stays raw)."""
    end = np.flatnonzero(row >= EOS)
    data = row[:end[0] if len(end) else len(row)].astype(np.uint8)
    try:
      return jpeg.to_file(data, self.quality)
    except ValueError:
      return data.tobytes()

  def decode_file(self, data: bytes):
    """A file -> float32 [H, W, 3] in [-1, 1]; a file Pillow cannot decode at the configured size is mid-grey."""
    try:
      with Image.open(io.BytesIO(data)) as im:
        im.load()
        image = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError):
      image = None
    if image is None or image.shape != (self.image_size, self.image_size, 3):
      return np.zeros((self.image_size, self.image_size, 3), np.float32)
    return image.astype(np.float32) / 127.5 - 1.0

  def sample(self, params, cond, rng, **opts):
    """Images [B, H, W, 3] in [-1, 1] for cond={'label': [B]} (decoded on the host with Pillow)."""
    label_B = np.asarray(self.conditioner.get(cond))
    files = self.sample_files(params, label_B, rng, **opts)
    return jnp.asarray(np.stack([self.decode_file(f) for f in files]))
