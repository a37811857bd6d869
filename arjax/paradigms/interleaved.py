"""Orthus-style interleaved image-text generation: one causal transformer, an LM head for text, a diffusion head for
continuous image tokens, and a modality switch.

Sequence (one stream of tokens, sequence indices = positions, 1D RoPE):
  caption -> image:  <bos> caption bytes <boi> x_0 ... x_{N-1} <eoi> <eos> <pad> ...
  image -> caption:  <bos> <boi> x_0 ... x_{N-1} <eoi> caption bytes <eos> <pad> ...
Text tokens are bytes 0..255 plus the specials BOS, EOS, BOI, EOI, PAD; the LM head predicts them. The N image
slots hold continuous tokens: the frozen VQ tokenizer's pre-quantisation latents, unit-normalised (the space its
cosine codebook lives in) and scaled by sqrt(C) to unit variance per dimension. The hidden state before slot k
conditions a diffusion head (v-prediction, DDIM, CFG on v) that draws x_k; x_k is fed back through the soft-VQ
embedding softmax(-||z - c_k||^2 / tau) E with z = x / sqrt(C), c_k a trainable copy of the VQ codebook
(unit-normalised on use) and E a learned table, or through a linear projection (model.feed='linear').
model.image_head='lm' is the Chameleon-style baseline on the same backbone: slots hold the hard VQ ids as
extra vocabulary of the one LM head (no diffusion head, no continuous tokens).

Training mixes both directions in one batch (even rows caption -> image, odd rows image -> caption): text
cross-entropy on the positions that predict a text token, image loss (diffusion, or the baseline's CE) on the
positions that predict a slot, each averaged over its own positions. Captions of caption -> image rows are
dropped with model.label_drop (the Conditioner's null caption: <bos> <boi> x ... <eoi>, the unconditional image
that CFG uses; the <eos> after such an image is not trained, since image -> caption rows continue there).

Generation (`generate`) runs the sampler skeleton one token per step with a KV cache: text until <boi>, exactly
N slots, a forced <eoi>, text until <eos> (per-row modes and stops). With CFG the batch has unconditional rows
that hold <bos> <boi> and the current image's slots only: they consume a token only while their row is inside an
image and are rolled back to <bos> (cache.truncate) otherwise.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arjax import heads
from arjax import cache as cache_lib
from arjax import masks
from arjax.nn import layers
from arjax.nn.transformer import Transformer, TransformerConfig
from arjax.paradigms import base
from arjax.sampling import logits as logits_lib
from arjax.sampling import loop
from arjax.tokenizers import vq as vq_lib

KEYS = ("width", "transformer", "head", "image_head", "feed", "tau", "max_text", "image_weight")
BOS, EOS, BOI, EOI, PAD, IMG = 256, 257, 258, 259, 260, 261  # IMG: the slot placeholder (baseline: IMG + code)
SPECIALS = {"<bos>": BOS, "<eos>": EOS, "<boi>": BOI, "<eoi>": EOI}
IMAGE_HEADS, FEEDS = ("diffusion", "lm"), ("soft_vq", "linear")
# extra sampling options: DDIM steps (None: model.head.steps), the image temperature (diffusion: scale of the
# initial noise; baseline: softmax temperature of the image codes), and the number of generated tokens
EXTRA = dict(steps=None, image_temperature=1.0, max_new=0)


class Seq(NamedTuple):
  """A (partial) interleaved sequence: token ids [B, T] (IMG at slots), slot index [B, T] (-1: text), x [B, T, C]."""
  tokens: jax.Array
  slot: jax.Array
  x: jax.Array


class InterleavedNet(nn.Module):
  """Token / slot embeddings -> causal transformer -> LM logits; `feed` embeds continuous image tokens."""
  vocab_size: int
  tcfg: TransformerConfig
  token_dim: int
  codebook_size: int
  image_head: str
  feed_kind: str
  tau: float

  def setup(self):
    init = lambda axes: nn.with_logical_partitioning(nn.initializers.normal(0.02), axes)
    self.embed = nn.Embed(self.vocab_size, self.tcfg.width, embedding_init=init(("vocab", "embed")))
    self.transformer = Transformer(self.tcfg)
    self.lm_head = layers.Dense(self.vocab_size, kernel_init=nn.with_logical_partitioning(
        nn.initializers.zeros, ("embed", "vocab")))
    if self.image_head == "diffusion" and self.feed_kind == "soft_vq":
      self.codebook = self.param("codebook", nn.initializers.normal(1.0), (self.codebook_size, self.token_dim))
      self.code_embed = nn.Embed(self.codebook_size, self.tcfg.width, embedding_init=init(("vocab", "embed")))
    elif self.image_head == "diffusion":
      self.proj = layers.Dense(self.tcfg.width, kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), (None, "embed")))

  def __call__(self, emb_BTD, cache=None):
    """(features [B, T, D], cache); positions are the sequence indices (the cache's, when given)."""
    return self.transformer(emb_BTD, masks.causal(), cache=cache)

  def teacher_forced(self, seq):
    """(features [B, T, D], logits [B, T, V]) of a whole sequence without a cache."""
    h = self(self.embed_inputs(seq))[0]
    return h, self.logits(h)

  def extend(self, seq, cache):
    """(features [B, T, D], cache) of `seq` appended to the cached sequence."""
    return self(self.embed_inputs(seq), cache)

  def logits(self, h_BTD):
    return self.lm_head(h_BTD).astype(jnp.float32)

  def soft_vq_weights(self, x_NC, tau=None):
    """softmax(-||x / sqrt(C) - c_k||^2 / tau) over the unit codes c_k [N, K]."""
    z = x_NC.astype(jnp.float32) / math.sqrt(self.token_dim)
    codes = layers.l2_normalize(self.codebook.astype(jnp.float32))
    d_NK = (jnp.sum(z * z, -1, keepdims=True) - 2 * jnp.einsum("nc,kc->nk", z, codes, precision="highest")
            + jnp.sum(codes * codes, -1)[None])
    return jax.nn.softmax(-d_NK / (self.tau if tau is None else tau), axis=-1)

  def feed(self, x_NC, tau=None):
    """Embedding [N, D] of continuous image tokens: soft-VQ (weights @ E) or a linear projection."""
    if self.feed_kind == "linear":
      return self.proj(x_NC)
    return self.soft_vq_weights(x_NC, tau) @ self.code_embed.embedding

  def hard_vq(self, x_NC):
    """E[nearest unit code] [N, D]: the hard-VQ embedding the soft one tends to as tau -> 0."""
    return self.code_embed(vq_lib.nearest_code(x_NC, self.codebook))

  def embed_inputs(self, seq: Seq):
    """Input embeddings [B, T, D]: token embeddings, continuous slots through `feed` (diffusion head only)."""
    emb = self.embed(seq.tokens)
    if self.image_head == "lm":
      return emb
    b, t, c = seq.x.shape
    fed = self.feed(seq.x.reshape(b * t, c)).reshape(b, t, -1).astype(emb.dtype)
    return jnp.where((seq.slot >= 0)[..., None], fed, emb)


class Interleaved(base.Paradigm):
  """Orthus (model.image_head='diffusion') or the hard-VQ LM-only baseline ('lm'); an arjax.interfaces.Paradigm
  conditioned on captions, plus generate / text_to_image / image_to_text."""

  def __init__(self, cfg, tokenizer, tokenizer_params):
    super().__init__(cfg, tokenizer, tokenizer_params, KEYS)
    if self.conditioner.kind != "caption":
      raise ValueError(f"model.cond must be 'caption' for the interleaved paradigm, got {self.conditioner.kind!r}")
    self.image_head = cfg.get("image_head", "diffusion")
    self.feed_kind = cfg.get("feed", "soft_vq")
    if self.image_head not in IMAGE_HEADS or self.feed_kind not in FEEDS:
      raise ValueError(f"model.image_head must be one of {IMAGE_HEADS} and model.feed one of {FEEDS}; got "
                       f"{self.image_head!r}, {self.feed_kind!r}")
    if not hasattr(tokenizer, "net") or not isinstance(tokenizer.net, vq_lib.VQNet):
      raise ValueError("the interleaved paradigm needs the VQ tokenizer (configs/shapes/vq.py): soft-VQ uses its "
                       f"codebook and its pre-quantisation latents; got {type(tokenizer).__name__}")
    self.max_text = int(cfg.get("max_text", 48))
    self.caption_len = self.conditioner.caption_len
    if not 0 < self.max_text <= self.caption_len:
      raise ValueError(f"model.max_text must be in [1, {self.caption_len}], got {self.max_text}")
    self.num_slots = math.prod(self.grid)
    self.token_dim = int(tokenizer.cfg["code_dim"])
    self.codebook_size = tokenizer.vocab_size
    self.seq_len = self.num_slots + self.max_text + 4
    self.image_weight = float(cfg.get("image_weight", 1.0))
    self.vocab_size = IMG + (self.codebook_size if self.image_head == "lm" else 1)
    self.tcfg = TransformerConfig.make(cfg.transformer, width=cfg.width, max_len=2 * self.seq_len)
    self.net = InterleavedNet(self.vocab_size, self.tcfg, self.token_dim, self.codebook_size, self.image_head,
                              self.feed_kind, float(cfg.get("tau", 0.05)))
    self.head = heads.build(self.token_dim, cfg.head) if self.image_head == "diffusion" else None

  def _apply(self, params, fn, *args):
    return self.net.apply({"params": params["net"]}, *args, method=fn)

  # ---- images <-> continuous tokens (the frozen VQ tokenizer)

  def image_tokens(self, images_BHW3):
    """(continuous tokens [B, N, C]: unit latents * sqrt(C), VQ ids [B, N]) of images in [-1, 1]."""
    z = self.tokenizer.net.apply({"params": self.tokenizer_params}, jnp.asarray(images_BHW3, jnp.float32),
                                 method=vq_lib.VQNet.latents)
    z_NC = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
    codes = vq_lib.nearest_code(z_NC, self.tokenizer_params["codebook"])
    b = z.shape[0]
    return (layers.l2_normalize(z_NC) * math.sqrt(self.token_dim)).reshape(b, -1, self.token_dim), codes.reshape(b, -1)

  def decode(self, x_BNC=None, codes_BN=None):
    """Images [B, H, W, 3] in [-1, 1] from continuous tokens (projected onto the unit sphere) or VQ ids."""
    if codes_BN is not None:
      return self.tokenizer.decode(self.tokenizer_params, codes_BN.reshape(-1, *self.grid))
    z = layers.l2_normalize(x_BNC.astype(jnp.float32)).reshape(-1, *self.grid, self.token_dim)
    return jnp.clip(self.tokenizer.net.apply({"params": self.tokenizer_params}, z,
                                             method=vq_lib.VQNet.decode_codes), -1.0, 1.0)

  # ---- training

  def preprocess(self, batch):
    """Images -> continuous tokens x [B, N, C] and VQ ids codes [B, N]; captions pass through."""
    x, codes = self.image_tokens(batch["image"])
    return dict(self.conditioner.from_batch(batch), x=x, codes=codes)

  def train_seq(self, caption_BL, x_BNC, codes_BN, c2i_B):
    """(Seq [B, T], text-target mask [B, T - 1], first slot index [B]) of the two directions (see module doc)."""
    b, n, t_len = caption_BL.shape[0], self.num_slots, self.seq_len
    cap = caption_BL[:, :self.max_text].astype(jnp.int32)
    n_B = jnp.sum(cap > 0, axis=1)
    img_start = jnp.where(c2i_B, n_B + 2, 2)
    text_start = jnp.where(c2i_B, 1, n + 3)
    eos_at = n + n_B + 3  # the same index in both directions
    t = jnp.arange(t_len)[None]
    k_BT = t - img_start[:, None]
    slot = jnp.where((k_BT >= 0) & (k_BT < n), k_BT, -1)
    j_BT = t - text_start[:, None]
    byte = jnp.take_along_axis(cap, jnp.clip(j_BT, 0, cap.shape[1] - 1), axis=1)
    slot_tok = IMG + (jnp.take_along_axis(codes_BN, jnp.maximum(slot, 0), axis=1) if self.image_head == "lm" else 0)
    tokens = jnp.select([t == 0, (j_BT >= 0) & (j_BT < n_B[:, None]), t == img_start[:, None] - 1, slot >= 0,
                         t == (img_start + n)[:, None], t == eos_at[:, None]],
                        [BOS, byte, BOI, slot_tok, EOI, EOS], PAD)
    x = jnp.where((slot >= 0)[..., None], jnp.take_along_axis(x_BNC, jnp.maximum(slot, 0)[..., None], axis=1), 0.0)
    tgt_tok, tgt_slot = tokens[:, 1:], slot[:, 1:]
    unconditional_eos = (c2i_B & (n_B == 0))[:, None] & (tgt_tok == EOS)
    text_mask = (tgt_slot < 0) & (tgt_tok != PAD) & ~unconditional_eos
    return Seq(tokens.astype(jnp.int32), slot.astype(jnp.int32), x.astype(jnp.float32)), text_mask, img_start

  def outputs(self, params, seq: Seq):
    """Teacher-forced (features [B, T, D], logits [B, T, V]) of a whole sequence."""
    return self._apply(params, InterleavedNet.teacher_forced, seq)

  def text_loss(self, logits_BTV, seq: Seq, text_mask):
    """Mean cross-entropy of the text targets (positions t whose next token is text)."""
    nll = logits_lib.token_nll(logits_BTV[:, :-1], seq.tokens[:, 1:])
    w = text_mask.astype(jnp.float32)
    return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)

  def image_loss(self, params, h_BTD, logits_BTV, seq: Seq, img_start_B, rng):
    """Mean image loss over the N positions before the slots: diffusion loss on x, or (baseline) code CE."""
    idx_BN = img_start_B[:, None] - 1 + jnp.arange(self.num_slots)[None]
    if self.image_head == "lm":
      logits = jnp.take_along_axis(logits_BTV, idx_BN[..., None], axis=1)
      return jnp.mean(logits_lib.token_nll(logits, jnp.take_along_axis(seq.tokens, idx_BN + 1, axis=1)))
    z = jnp.take_along_axis(h_BTD, idx_BN[..., None], axis=1)
    x = jnp.take_along_axis(seq.x, idx_BN[..., None] + 1, axis=1)
    return jnp.mean(self.head.loss(params["head"], z.reshape(-1, z.shape[-1]), x.reshape(-1, self.token_dim), rng))

  def init(self, rng, batch):
    """Params {'net', 'head'}; the soft-VQ codebook starts as the tokenizer's codebook."""
    del batch
    k_net, k_head = jax.random.split(rng)
    seq = Seq(jnp.zeros((1, 4), jnp.int32), jnp.full((1, 4), -1), jnp.zeros((1, 4, self.token_dim)))
    net = self.net.init(k_net, seq, method=InterleavedNet.teacher_forced)["params"]
    if "codebook" in net:
      net = dict(net, codebook=jnp.asarray(self.tokenizer_params["codebook"], jnp.float32))
    params = dict(net=net)
    if self.head is not None:
      params["head"] = self.head.init(k_head, jnp.zeros((1, self.tcfg.width)))
    return params

  def loss(self, params, batch, rng, train=True):
    k_drop, k_head = jax.random.split(rng)
    b = batch["caption"].shape[0]
    c2i_B = jnp.arange(b) % 2 == 0
    cond = self.conditioner.from_batch(batch)
    caption = batch["caption"]
    if train:  # label dropout on the caption -> image rows only (image -> caption rows need their caption)
      caption = jnp.where(c2i_B[:, None], self.conditioner.drop(cond, k_drop)["caption"], caption)
    seq, text_mask, img_start = self.train_seq(caption, batch["x"], batch["codes"], c2i_B)
    h, logits = self.outputs(params, seq)
    text = self.text_loss(logits, seq, text_mask)
    image = self.image_loss(params, h, logits, seq, img_start, k_head)
    loss = text + self.image_weight * image
    return loss, dict(loss=loss, text_loss=text, image_loss=image)

  # ---- generation: the sampler skeleton, one token per step, per-row modality switch

  def _masked(self, logits_BV, image: bool):
    """Logits restricted to what may come next: text (bytes 1..255, <eos>, <boi>) or image codes (baseline)."""
    v = jnp.arange(self.vocab_size)
    allowed = (v >= IMG) if image else (((v > 0) & (v < 256)) | (v == EOS) | (v == BOI))
    return jnp.where(allowed, logits_BV, logits_lib.NEG_INF)

  def _forward(self, params, state, unit, guided):
    tok, x, count = state.feed["tok"], state.feed["x"], state.feed["count"]
    seq = Seq(tok[:, None], jnp.where((count > 0) & (count <= self.num_slots), count - 1, -1)[:, None], x[:, None])
    seq = jax.tree.map(lambda a: jnp.concatenate([a, a]), seq) if guided else seq
    h, cache = self._apply(params, InterleavedNet.extend, seq, state.cache)
    in_image = (count >= 0) & (count < self.num_slots)
    if guided:  # unconditional rows keep <bos> <boi> + the current image only
      big = jnp.full_like(in_image, jnp.iinfo(jnp.int32).max, dtype=jnp.int32)
      cache = cache_lib.truncate(cache, jnp.concatenate([big, jnp.where(in_image, big, 1)]))
    return (h[:, 0], jnp.any(in_image)), cache

  def _draw(self, params, feat, scale, unit, rng, opts):
    h, any_image = feat
    b = h.shape[0] // (1 if scale is None else 2)
    k_text, k_image = jax.random.split(rng)
    logits = self._apply(params, InterleavedNet.logits, h)
    text = logits_lib.draw(k_text, self._masked(logits[:b], False), None, **opts)
    img_opts = dict(opts, temperature=opts["image_temperature"])
    if self.image_head == "lm":
      return text, logits_lib.draw(k_image, self._masked(logits, True), scale, **img_opts) - IMG
    steps = self.cfg.head.steps if opts["steps"] is None else opts["steps"]
    sample = lambda: self.head.sample(params["head"], h, k_image, guide_scale=scale, steps=steps,
                                      temperature=opts["image_temperature"], solver="ddim")
    return text, jax.lax.cond(any_image, sample, lambda: jnp.zeros((b, self.token_dim), jnp.float32))

  def _commit(self, state, drawn, unit):
    text, image = drawn
    f = state.feed
    count, i = f["count"], f["pos"] + 1
    b = count.shape[0]
    is_slot, is_eoi = (count >= 0) & (count < self.num_slots), count == self.num_slots
    slot_tok = IMG + (image if self.image_head == "lm" else 0)
    tok = jnp.where(is_slot, slot_tok, jnp.where(is_eoi, EOI, text)).astype(jnp.int32)
    x = jnp.where(is_slot[:, None], image, 0.0) if self.image_head == "diffusion" else f["x"]
    rows = jnp.arange(b)
    out = state.out
    out = dict(tokens=out["tokens"].at[rows, i].set(tok, mode="drop"),
               slot=out["slot"].at[rows, i].set(jnp.where(is_slot, count, -1), mode="drop"),
               x=out["x"].at[rows, i].set(x, mode="drop"), length=i + 1)
    new_count = jnp.where(is_slot, count + 1, jnp.where(tok == BOI, 0, -1))
    done = (~is_slot & ~is_eoi & (tok == EOS)) | (i + 1 >= out["tokens"].shape[1])
    return out, dict(tok=tok, x=x, count=new_count, pos=i), done

  @loop.sampler(EXTRA)
  def generate_seq(self, params, prompt, rng, opts):
    """Generated Seq + length [B] after prompt = (Seq [B, P], length [B]) (`opts`: loop.options + EXTRA)."""
    seq, length = prompt
    b, p = seq.tokens.shape
    guide = loop.guidance(opts)
    total = p + (opts["max_new"] or self.seq_len)
    rows = 2 * b if guide.on else b
    pre = jax.tree.map(lambda a: a[:, :p - 1], seq)
    pre = jax.tree.map(lambda a: jnp.concatenate([a, a]), pre) if guide.on else pre
    cache = self.tcfg.init_cache(rows, total)
    _, cache = self._apply(params, InterleavedNet.extend, pre, cache)
    ends = jnp.concatenate([length - 1, jnp.ones((b,), jnp.int32)]) if guide.on else length - 1
    cache = cache_lib.truncate(cache, ends)
    last = length - 1
    pick = lambda a: jnp.take_along_axis(a, last.reshape((b,) + (1,) * (a.ndim - 1)), axis=1)[:, 0]
    tok, slot = pick(seq.tokens), pick(seq.slot)
    count = jnp.where(tok == BOI, 0, jnp.where(slot >= 0, slot + 1, -1))
    pad = lambda a, v: jnp.concatenate([a, jnp.full((b, total - p) + a.shape[2:], v, a.dtype)], axis=1)
    out = dict(tokens=pad(seq.tokens, PAD), slot=pad(seq.slot, -1), x=pad(seq.x, 0.0), length=length)
    feed = dict(tok=tok, x=pick(seq.x), count=count, pos=last)
    state = loop.init_state(out=out, feed=feed, cache=cache, batch=b, rng=rng)
    draw_opts = {k: opts[k] for k in ("temperature", "top_k", "top_p", "steps", "image_temperature")}
    steps = loop.Steps(lambda pr, s, u: self._forward(pr, s, u, guide.on),
                       lambda pr, f, sc, u, r: self._draw(pr, f, sc, u, r, draw_opts), self._commit)
    out = loop.run(steps, params, (1,) * (total - p), state, guide).out
    return Seq(out["tokens"], out["slot"], out["x"]), out["length"]

  # ---- prompts (host side: validated here, so a bad prompt is one clear error)

  def _caption_bytes(self, caption) -> bytes:
    if isinstance(caption, str):
      raw = caption.encode("utf-8")
    else:
      raw = bytes(np.asarray(caption, np.uint8)).rstrip(b"\0") if not isinstance(caption, bytes) else caption
      try:
        raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"caption bytes {raw[:80]!r} are not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if len(raw) > self.max_text:
      raise ValueError(f"caption {raw[:80]!r} is {len(raw)} bytes; model.max_text allows at most {self.max_text}")
    if b"\0" in raw:
      raise ValueError(f"caption {raw[:80]!r} contains a NUL byte (0 is the caption padding)")
    return raw

  def text_prompt(self, captions, boi: bool = False):
    """(Seq, length) of <bos> caption [<boi>] for captions: list[str | bytes] or uint8 [B, Lc] (0-padded)."""
    raws = [self._caption_bytes(c) for c in captions]
    p = self.max_text + 3  # one spare column: the prefill (all but the pending token) is never empty
    tokens = np.full((len(raws), p), PAD, np.int32)
    for r, raw in enumerate(raws):
      row = [BOS, *raw] + ([BOI] if boi else [])
      tokens[r, :len(row)] = row
    length = np.asarray([len(raw) + 1 + boi for raw in raws], np.int32)
    return (Seq(jnp.asarray(tokens), jnp.full(tokens.shape, -1, jnp.int32),
                jnp.zeros(tokens.shape + (self.token_dim,), jnp.float32)), jnp.asarray(length))

  def image_prompt(self, images_BHW3):
    """(Seq, length) of <bos> <boi> x_0..x_{N-1} <eoi> for images [B, H, W, 3] in [-1, 1]."""
    images = jnp.asarray(images_BHW3)
    size = self.tokenizer.image_size
    if images.ndim != 4 or tuple(images.shape[1:]) != (size, size, 3):
      raise ValueError(f"images must be [B, {size}, {size}, 3] in [-1, 1], got shape {images.shape}")
    x, codes = jax.jit(self.image_tokens)(images)
    b, n = codes.shape
    row = lambda before, mid, after: jnp.concatenate([jnp.broadcast_to(jnp.asarray(before), (b, 2)), mid,
                                                      jnp.broadcast_to(jnp.asarray(after), (b, 2))], 1)
    tokens = row([BOS, BOI], IMG + (codes if self.image_head == "lm" else 0 * codes), [EOI, PAD])  # a spare PAD
    slot = row([-1, -1], jnp.broadcast_to(jnp.arange(n), (b, n)), [-1, -1])
    x = jnp.concatenate([jnp.zeros((b, 2, self.token_dim)), x, jnp.zeros((b, 2, self.token_dim))], 1)
    return Seq(tokens.astype(jnp.int32), slot.astype(jnp.int32), x), jnp.full((b,), n + 3, jnp.int32)

  # ---- the public generation API

  def generate(self, params, prompt, rng, **opts):
    """Interleaved generation from captions (list[str | bytes], or uint8 [B, Lc]) or images [B, H, W, 3]:
    text until <boi>, N image slots, a forced <eoi>, text until <eos>. Returns dict(segments: per row a list of
    str and images [H, W, 3] in [-1, 1], seq: the final Seq, length [B]). opts: loop.options + EXTRA, boi=True
    to append <boi> to caption prompts."""
    boi = bool(opts.pop("boi", False))
    is_image = hasattr(prompt, "ndim") and np.ndim(prompt) == 4
    prompt = self.image_prompt(prompt) if is_image else self.text_prompt(prompt, boi)
    seq, length = self.generate_seq(params, prompt, rng, **opts)
    return dict(segments=self.segments(seq, length), seq=seq, length=length)

  def segments(self, seq: Seq, length_B):
    """Per row: the generated sequence (prompt included) as a list of text strings and decoded images."""
    tokens, slot, x, length = (np.asarray(a) for a in (*seq, length_B))
    values = x if self.image_head == "diffusion" else tokens - IMG
    rows, images = [], []
    for r in range(tokens.shape[0]):
      parts, text = [], b""
      for i in range(1, int(length[r])):
        if slot[r, i] == 0 and i + self.num_slots <= length[r]:  # a whole image: its index into `images`
          parts += [text.decode("utf-8", errors="replace"), len(images)]
          images.append(values[r, i:i + self.num_slots])
          text = b""
        elif tokens[r, i] < 256:
          text += bytes([int(tokens[r, i])])
      rows.append([p for p in parts + [text.decode("utf-8", errors="replace")] if not isinstance(p, str) or p])
    if images:
      stack = jnp.asarray(np.stack(images))
      pixels = np.asarray(self.decode(x_BNC=stack) if self.image_head == "diffusion" else self.decode(codes_BN=stack))
      rows = [[pixels[p] if isinstance(p, int) else p for p in parts] for parts in rows]
    return rows

  def first_image_tokens(self, seq: Seq):
    """The first image's slots of every row: continuous tokens [B, N, C] or (baseline) VQ ids [B, N]."""
    start = jnp.argmax(seq.slot == 0, axis=1)
    idx = start[:, None] + jnp.arange(self.num_slots)[None]
    if self.image_head == "lm":
      return jnp.take_along_axis(seq.tokens, idx, axis=1) - IMG
    return jnp.take_along_axis(seq.x, idx[..., None], axis=1)

  def text_to_image(self, params, captions, rng, **opts):
    """Images [B, H, W, 3] in [-1, 1] for captions (list[str]): <bos> caption <boi> -> N slots."""
    seq, _ = self.generate_seq(params, self.text_prompt(captions, boi=True), rng, **dict(opts, max_new=self.num_slots))
    tokens = self.first_image_tokens(seq)
    return self.decode(codes_BN=tokens) if self.image_head == "lm" else self.decode(x_BNC=tokens)

  def image_to_text(self, params, images_BHW3, rng, **opts):
    """Captions (list[str]) of images [B, H, W, 3] in [-1, 1]: the text after <eoi> up to <eos>."""
    opts.setdefault("max_new", self.max_text)
    out = self.generate(params, images_BHW3, rng, **opts)
    return ["".join(p for p in parts if isinstance(p, str)) for parts in out["segments"]]

  def sample(self, params, cond, rng, **opts):
    """text_to_image of cond['caption'] (uint8 [B, Lc], 0-padded UTF-8): the trainer's and the judge's sampler."""
    return self.text_to_image(params, np.asarray(self.conditioner.get(cond)), rng, **opts)
