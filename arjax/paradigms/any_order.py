"""Any-subset autoregression (AS-ARM): condition on any set of known tokens, generate the rest in any order;
sampled with ASSD (arjax/sampling/assd.py), exact parallel speculative decoding over the same network.

Tokens are VQ tokens of images (`tokens='image'`, the frozen tokenizer of config.tokenizer) or the UTF-8 bytes of
captions (`tokens='caption'`: no image tokenizer; CaptionBytes maps the 64 caption bytes to tokens and back, and
draws sampled captions as images for the trainer's sample grids).

Network: two-stream attention (XLNet) run as ONE transformer over [condition ; content stream (N) ; query stream
(N)] under one composed mask. With generation ranks r (0 = known), the sequence ranks are -2 for the condition,
2 r_i for content i and 2 r_i - 1 for query i; `ranked(inclusive)` lets a token see keys of rank <= its own, and
`prefix(1 + N, window_sink(1, 1))` keeps queries out of every key set but their own. So content i (its token
embedding) sees the condition and the contents of rank <= r_i, and query i (a learned vector at position i) sees
the condition, itself and the contents of rank < r_i. The query stream's logits at i are a function of
{(j, x_j) : r_j < r_i} alone: exactly `assd.sample`'s logits_fn contract, for any ranks, ties included (ASSD's
draft pass ties every undecoded position and must reproduce the oracle's conditional of the next token).
Why two streams and not one stream with strictly ranked attention: in a single stream, position i must carry x_i
(for the later positions that condition on it) and must not know x_i (it predicts it). Feeding x_i at i leaks it
through the residual path; feeding a mask token instead hides x_i from everyone after it. The query stream is the
copy of each position without its own token; the cost is a 2N + 1 sequence (no KV cache: ranks change each call).

Training ("joint" scheme): per example, a random subset stays visible (rank 0) and the other M tokens get ranks
1..M (raster order in a `raster_frac` of the rows, a random order in the rest); the mask rate M/N is 0.15 at step 0
and warms up linearly over `mask_warmup_steps` to U[0.85, 0.99]. Visible tokens attend to each other fully,
masked ones causally in the order; cross-entropy on the masked tokens.

  tokens, nfe = model.infill(params, tokens_BN, known_BN, rng, cond=..., order='raster'|'random', draft_len=k)
  images = model.sample(params, {'label': y}, rng, draft_len=k)   # everything masked
"""
from __future__ import annotations

import functools
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arjax import conditioning
from arjax import masks
from arjax.nn import layers
from arjax.nn import rope as rope_lib
from arjax.nn.transformer import Transformer, TransformerConfig
from arjax.paradigms import base
from arjax.sampling import assd
from arjax.sampling import guidance as guidance_lib
from arjax.sampling import logits as logits_lib
from arjax.sampling import loop

KEYS = ("width", "transformer", "tokens", "mask_warmup_steps", "raster_frac", "render_size")
SOURCES = ("image", "caption")  # what the tokens are: VQ tokens of the image, or the caption's bytes
ORDERS = ("raster", "random")
OPTIONS = dict(draft_len=1, order="raster")  # sampling options beyond guidance.DEFAULTS
MASK_START, MASK_LO, MASK_HI = 0.15, 0.85, 0.99  # the joint scheme's mask rates


class CaptionBytes:
  """The text "tokenizer": caption bytes uint8 [B, L] <-> tokens int32 [B, L] (vocab 256, 0 pads); `decode`
  draws the bytes as text on a render_size^2 canvas in [-1, 1], which is what sample grids show."""
  kind = "bytes"
  vocab_size = 256

  def __init__(self, length: int = conditioning.Conditioner.caption_len, render_size: int = 96):
    self.grid, self.render_size = (int(length),), int(render_size)

  def encode(self, params, captions_BL):
    del params
    if captions_BL.ndim != 2 or captions_BL.shape[1] != self.grid[0]:
      raise ValueError(f"captions must be uint8 [B, {self.grid[0]}], got {captions_BL.shape}")
    return captions_BL.astype(jnp.int32)

  def text(self, tokens_BL) -> list[str]:
    """Tokens -> strings (0 padding dropped, invalid UTF-8 replaced)."""
    return [bytes(np.asarray(t, np.uint8)).rstrip(b"\0").decode("utf-8", errors="replace") for t in tokens_BL]

  def decode(self, params, tokens_BL):
    del params
    from PIL import Image, ImageDraw, ImageFont
    font, s = ImageFont.load_default(), self.render_size
    out = []
    for line in self.text(tokens_BL):
      canvas = Image.new("RGB", (s, s))
      ImageDraw.Draw(canvas).multiline_text((2, 2), "\n".join(textwrap.wrap(line, s // 6)), font=font, spacing=1)
      out.append(np.asarray(canvas, np.float32) / 127.5 - 1.0)
    return np.stack(out)


class AnyOrderNet(nn.Module):
  """(condition, tokens, ranks) -> logits [B, N, V] of p(x_i | tokens of rank < rank_i): the query stream."""
  vocab_size: int
  conditioner: conditioning.Conditioner
  tcfg: TransformerConfig
  positions: tuple  # per token: (row, col) with rope2d, else (index,)

  def setup(self):
    d, n = self.tcfg.width, len(self.positions)
    init = lambda names: nn.with_logical_partitioning(nn.initializers.normal(0.02), names)
    self.embed = nn.Embed(self.vocab_size, d, embedding_init=init(("vocab", "embed")))
    self.pos_embed = self.param("pos_embed", init((None, "embed")), (n, d))
    self.query = self.param("query", init(("embed",)), (d,))
    self.cond = self.conditioner.embedder(d)
    self.transformer = Transformer(self.tcfg)
    self.head = layers.Dense(self.vocab_size, kernel_init=nn.with_logical_partitioning(
        nn.initializers.zeros, ("embed", "vocab")))

  def __call__(self, cond, tokens_BN, rank_BN):
    b, n = tokens_BN.shape
    content_BND = self.embed(tokens_BN) + self.pos_embed
    query_BND = jnp.broadcast_to(self.query + self.pos_embed, content_BND.shape).astype(content_BND.dtype)
    x_BLD = jnp.concatenate([self.cond(cond)[:, None].astype(content_BND.dtype), content_BND, query_BND], 1)
    rank_BL = jnp.concatenate([jnp.full((b, 1), -2, jnp.int32), 2 * rank_BN, 2 * rank_BN - 1], 1)
    pos = np.asarray(self.positions)
    pos_L = np.concatenate([np.full((1,) + pos.shape[1:], -1), pos, pos])
    if pos_L.shape[-1] == 1:
      pos_L = pos_L[:, 0]
    mask = masks.ranked(rank_BL, inclusive=True) & masks.prefix(1 + n, masks.window_sink(1, 1))
    h_BLD, _ = self.transformer(x_BLD, mask, positions=pos_L)
    return self.head(h_BLD[:, 1 + n:]).astype(jnp.float32)


class AnyOrder(base.Paradigm):
  """The any-subset AR paradigm (an arjax.interfaces.Paradigm) with ASSD sampling and infilling."""

  def __init__(self, cfg, tokenizer=None, tokenizer_params=None):
    self.source = cfg.get("tokens", "image")
    if self.source not in SOURCES:
      raise ValueError(f"model.tokens must be one of {SOURCES}, got {self.source!r}")
    if self.source == "caption":
      tokenizer, tokenizer_params = CaptionBytes(render_size=cfg.get("render_size", 96)), None
    elif tokenizer is None:
      raise ValueError("model.tokens='image' needs a frozen tokenizer: set config.tokenizer (configs/shapes/vq.py)")
    super().__init__(cfg, tokenizer, tokenizer_params, KEYS)
    self.num_tokens = int(np.prod(self.grid))
    pos = cfg.transformer.get("pos", "rope1d")
    if pos not in ("rope1d", "rope2d") or (pos == "rope2d" and len(self.grid) != 2):
      raise ValueError(f"model.transformer.pos must be 'rope1d' or (for 2D token grids) 'rope2d', got {pos!r} "
                       f"for grid {self.grid}")
    positions = rope_lib.grid_positions(*self.grid) if pos == "rope2d" else np.arange(self.num_tokens)[:, None]
    self.warmup = int(cfg.get("mask_warmup_steps", 0))
    self.raster_frac = float(cfg.get("raster_frac", 0.5))
    self.tcfg = TransformerConfig.make(cfg.transformer, width=cfg.width, max_len=2 * self.num_tokens + 1)
    self.net = AnyOrderNet(tokenizer.vocab_size, self.conditioner, self.tcfg, tuple(map(tuple, positions.tolist())))

  def preprocess(self, batch):
    """Images (VQ, frozen) or caption bytes -> tokens [B, N]; the conditioning entries pass through."""
    tokens = self.tokenizer.encode(self.tokenizer_params, batch[self.source])
    return dict(self.conditioner.from_batch(batch), tokens=tokens.reshape(tokens.shape[0], -1))

  def logits(self, params, cond, tokens_BN, rank_BN):
    """[B, N, V]: at i, the logits of p(x_i | cond, {x_j : rank_j < rank_i})."""
    return self.net.apply({"params": params}, cond, tokens_BN, rank_BN)

  def init(self, rng, batch):
    tokens = jnp.zeros((1, self.num_tokens), jnp.int32)
    return self.net.init(rng, self.conditioner.example(1), tokens, tokens)["params"]

  def train_ranks(self, rng, batch: int, step=None):
    """The joint scheme's ranks [B, N]: 0 on a random visible subset, 1..M on the others (raster or random
    order); M / N warms up from 0.15 to U[0.85, 0.99] over mask_warmup_steps (step None: warmed up)."""
    n = self.num_tokens
    k_rate, k_subset, k_order = jax.random.split(rng, 3)
    t = 1.0 if step is None or self.warmup <= 0 else jnp.clip(step / self.warmup, 0.0, 1.0)
    late = jax.random.uniform(k_rate, (batch,), minval=MASK_LO, maxval=MASK_HI)
    m_B = jnp.clip(jnp.round(((1 - t) * MASK_START + t * late) * n), 1, n).astype(jnp.int32)
    perm_BN = jnp.argsort(jnp.argsort(jax.random.uniform(k_subset, (batch, n)), axis=1), axis=1)
    masked_BN = perm_BN < m_B[:, None]
    raster_B = jax.random.bernoulli(k_order, self.raster_frac, (batch,))
    key_BN = jnp.where(masked_BN, jnp.where(raster_B[:, None], jnp.arange(n), perm_BN), -1)
    order_BN = jnp.argsort(jnp.argsort(key_BN, axis=1), axis=1)  # visible first, then masked in order
    return jnp.where(masked_BN, order_BN - (n - m_B[:, None]) + 1, 0).astype(jnp.int32)

  def loss(self, params, batch, rng, train=True, step=None):
    k_drop, k_rank = jax.random.split(rng)
    cond = self.conditioner.from_batch(batch)
    cond = self.conditioner.drop(cond, k_drop) if train else cond
    tokens = batch["tokens"]
    rank = self.train_ranks(k_rank, tokens.shape[0], step)
    logits = self.logits(params, cond, tokens, rank)
    masked = (rank > 0).astype(jnp.float32)
    nll = (logits_lib.token_nll(logits, tokens) * masked).sum() / masked.sum()
    acc = ((logits.argmax(-1) == tokens) * masked).sum() / masked.sum()
    return nll, dict(nll=nll, token_acc=acc, mask_rate=masked.mean())

  def nll(self, params, batch):
    """Per-example NLL (nats) of all N tokens in raster order (nothing known): the joint likelihood."""
    tokens = batch["tokens"]
    rank = jnp.broadcast_to(jnp.arange(1, self.num_tokens + 1), tokens.shape)
    return logits_lib.token_nll(self.logits(params, self.conditioner.from_batch(batch), tokens, rank), tokens).sum(-1)

  # ---- sampling: ASSD over this network

  def logits_fn(self, params, cond, opts):
    """assd's logits_fn: temperature, top-k / top-p and constant CFG applied to the network's logits."""
    guide = loop.guidance(opts)
    if guide.on and guide.schedule != "constant":
      raise ValueError(f"any_order samples with a constant cfg_schedule, got {guide.schedule!r}")
    cond2 = self.conditioner.double(cond) if guide.on else cond

    def fn(tokens_BN, rank_BN):
      logits = self.logits(params, cond2, guide.double(tokens_BN), guide.double(rank_BN))
      logits = guidance_lib.combine(logits, guide.scale) if guide.on else logits
      flat = logits.reshape(-1, logits.shape[-1]) / jnp.maximum(opts["temperature"], 1e-6)
      flat = logits_lib.filter_logits(flat, opts["top_k"], opts["top_p"])
      return flat.reshape(logits.shape)

    return fn

  def order_ranks(self, known_BN, order: str, rng):
    """Ranks [B, N]: 0 where known, 1..M over the others in raster or (per row) random order."""
    if order not in ORDERS:
      raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    n = known_BN.shape[1]
    key_BN = jnp.arange(n, dtype=jnp.float32) if order == "raster" else jax.random.uniform(rng, known_BN.shape)
    key_BN = jnp.where(known_BN, -1.0, jnp.broadcast_to(key_BN, known_BN.shape))
    order_BN = jnp.argsort(jnp.argsort(key_BN, axis=1), axis=1)
    return jnp.where(known_BN, 0, order_BN - known_BN.sum(1, keepdims=True) + 1).astype(jnp.int32)

  @functools.partial(jax.jit, static_argnums=(0, 6, 7, 8))
  def _infill(self, params, cond, tokens_BN, known_BN, rng, order, draft_len, static_items, temperature):
    k_order, k_sample = jax.random.split(rng)
    rank_BN = self.order_ranks(known_BN, order, k_order)
    fn = self.logits_fn(params, cond, dict(static_items, temperature=temperature))
    return assd.sample(fn, tokens_BN, rank_BN, k_sample, draft_len=draft_len)

  def infill(self, params, tokens, known_mask, rng, *, cond=None, order="raster", draft_len=1, **opts):
    """(tokens [B, N] with the unknown ones generated, nfe [B]); tokens / known_mask are [B, N] (or the token grid
    [B, h, w]); cond None is the null condition; draft_len=1 is sequential sampling, k > 1 ASSD."""
    tokens, known_mask = jnp.asarray(tokens), jnp.asarray(known_mask, bool)
    b = tokens.shape[0]
    if tokens.shape != known_mask.shape or tokens.shape[1:] not in (self.grid, (self.num_tokens,)):
      raise ValueError(f"tokens {tokens.shape} and known_mask {known_mask.shape} must both be [B, {self.num_tokens}] "
                       f"or [B, *{self.grid}]")
    if order not in ORDERS:
      raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    cond = self.conditioner.example(b) if cond is None else cond  # the null condition
    if self.conditioner.batch_size(cond) != b:
      raise ValueError(f"cond has {self.conditioner.batch_size(cond)} rows, tokens {b}")
    o = loop.options(opts)
    temperature = o.pop("temperature")
    out, nfe = self._infill(params, cond, tokens.reshape(b, -1).astype(jnp.int32), known_mask.reshape(b, -1), rng,
                            order, draft_len, tuple(sorted(o.items())), temperature)
    return out.reshape(tokens.shape), nfe

  def sample_tokens(self, params, cond, rng, **opts):
    """(tokens [B, N], nfe [B]) generated from nothing known, with `opts` (draft_len, order, guidance)."""
    o = loop.options(opts, OPTIONS)
    b = self.conditioner.batch_size(cond)
    zeros = jnp.zeros((b, self.num_tokens), jnp.int32)
    return self.infill(params, zeros, zeros.astype(bool), rng, cond=cond, order=o.pop("order"),
                       draft_len=o.pop("draft_len"), **o)

  @functools.cached_property
  def decode(self):
    """tokens [B, *grid] -> images [B, H, W, 3] in [-1, 1] (jitted VQ decoder; caption bytes drawn as text)."""
    return jax.jit(self.tokenizer.decode) if self.source == "image" else self.tokenizer.decode

  def sample(self, params, cond, rng, **opts):
    """Images [B, H, W, 3] in [-1, 1] (caption models: the sampled captions drawn as images)."""
    tokens, _ = self.sample_tokens(params, cond, rng, **opts)
    return self.decode(self.tokenizer_params, tokens.reshape(-1, *self.grid))
