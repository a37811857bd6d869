"""Class-conditional next-token (raster) AR over VQ tokens, LlamaGen-style.

Sequence: [class token, t_0, ..., t_{N-2}] -> predicts [t_0, ..., t_{N-1}]. One embedding table
holds the V image tokens and C+1 class tokens (id V + c; the last class is the null class used
for label dropout and CFG). With 2D RoPE, input i carries the grid position of the token it
predicts, so every query knows where its output goes (cfg.rope_convention='llamagen' instead gives
input i the grid position of token i - 1 and the class token an all-zero rotary table, which zeroes
its q and k: LlamaGen's convention, for its converted weights). Sampling runs a `lax.fori_loop` over the
N tokens with an explicit KV cache; CFG doubles the batch with null-class rows.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from arjax import cache as cache_lib
from arjax import config as config_lib
from arjax import masks
from arjax.nn import rope as rope_lib
from arjax.nn.transformer import Transformer
from arjax.sampling import logits as logits_lib


class NextTokenNet(nn.Module):
  """Token + class embeddings -> causal transformer -> logits over the V image tokens."""
  vocab_size: int
  num_classes: int
  width: int
  transformer: dict

  @nn.compact
  def __call__(self, ids_BL, positions, cache=None):
    emb = nn.Embed(self.vocab_size + self.num_classes + 1, self.width, name="embed",
                   embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                               ("vocab", "embed")))(ids_BL)
    h_BLD, cache = Transformer(**self.transformer, name="transformer")(
        emb, masks.causal(), positions=positions, cache=cache)
    logits_BLV = nn.Dense(self.vocab_size, name="head", kernel_init=nn.with_logical_partitioning(
        nn.initializers.zeros, ("embed", "vocab")))(h_BLD)
    return logits_BLV.astype(jnp.float32), cache


class NextToken:
  """The next-token paradigm as a Trainable (see arjax/train): init, loss, preprocess, sample."""

  KEYS = ("name", "num_classes", "width", "label_drop", "transformer", "rope_convention")

  def __init__(self, cfg, tokenizer, tokenizer_params):
    config_lib.check_keys(cfg, self.KEYS, "model")
    config_lib.check_keys(cfg.transformer, Transformer.__dataclass_fields__.keys() - {"parent", "name"},
                          "model.transformer")
    self.cfg = cfg
    self.tokenizer, self.tokenizer_params = tokenizer, tokenizer_params
    self.grid = tuple(tokenizer.grid)
    self.num_tokens = self.grid[0] * self.grid[1]
    self.num_classes = cfg.num_classes
    tcfg = dict(cfg.transformer)
    if tcfg.get("pos") == "learned":
      tcfg["max_len"] = self.num_tokens
    self.rope_convention = cfg.get("rope_convention", "predicted")
    if self.rope_convention not in ("predicted", "llamagen"):
      raise ValueError(f"rope_convention must be 'predicted' or 'llamagen', got {self.rope_convention!r}")
    if self.rope_convention == "llamagen":
      tcfg["rope_zero_negative"] = True
    self.net = NextTokenNet(tokenizer.vocab_size, cfg.num_classes, cfg.width, tcfg)

  def positions(self, start: int, length: int):
    """Positions of inputs [start, start+length): the grid position (or index) of the predicted token."""
    idx = jnp.arange(length) + start
    if self.net.transformer.get("pos") == "rope2d":
      if self.rope_convention == "llamagen":  # the class token (input 0) gets (-1, -1): a zero table
        grid = jnp.concatenate([jnp.full((1, 2), -1), rope_lib.grid_positions(*self.grid)])
        return grid[idx]
      return rope_lib.grid_positions(*self.grid)[idx]
    return idx

  def preprocess(self, batch):
    """Images -> VQ tokens [B, N] with the frozen tokenizer."""
    tokens = self.tokenizer.encode(self.tokenizer_params, batch["image"])
    return dict(tokens=tokens.reshape(tokens.shape[0], -1), label=batch["label"])

  def _inputs(self, tokens_BN, label_B):
    cls = self.tokenizer.vocab_size + label_B
    return jnp.concatenate([cls[:, None], tokens_BN[:, :-1]], axis=1)

  def init(self, rng, batch):
    tokens = jnp.zeros((1, self.num_tokens), jnp.int32)
    ids = self._inputs(tokens, jnp.zeros((1,), jnp.int32))
    return self.net.init(rng, ids, self.positions(0, self.num_tokens))["params"]

  def loss(self, params, batch, rng, train=True):
    tokens, label = batch["tokens"], batch["label"]
    if train and self.cfg.label_drop > 0:
      drop = jax.random.bernoulli(rng, self.cfg.label_drop, label.shape)
      label = jnp.where(drop, self.num_classes, label)
    logits, _ = self.net.apply({"params": params}, self._inputs(tokens, label),
                               self.positions(0, self.num_tokens))
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
    acc = (logits.argmax(-1) == tokens).mean()
    return nll.mean(), dict(nll=nll.mean(), token_acc=acc)

  def nll(self, params, batch):
    """Per-example summed NLL (nats) of the token sequence given the class."""
    logits, _ = self.net.apply({"params": params}, self._inputs(batch["tokens"], batch["label"]),
                               self.positions(0, self.num_tokens))
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["tokens"][..., None], -1)[..., 0].sum(-1)

  def sample_tokens(self, params, label_B, rng, *, temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0,
                    cfg_schedule="constant"):
    """Tokens [B, N] drawn token by token with a KV cache (a lax loop, jit-friendly)."""
    b, n = label_B.shape[0], self.num_tokens
    use_cfg = cfg_scale != 1.0
    labels = jnp.concatenate([label_B, jnp.full_like(label_B, self.num_classes)]) if use_cfg else label_B
    t = self.net.transformer
    heads = t["heads"]
    cache = cache_lib.init(t["depth"], labels.shape[0], n, t.get("kv_heads") or heads,
                           self.cfg.width // heads)

    def step(i, carry):
      cache, ids_B1, tokens_BN, rng = carry
      logits, cache = self.net.apply({"params": params}, ids_B1, self.positions(i, 1), cache=cache)
      logits = logits[:, 0]
      if use_cfg:
        scale = logits_lib.cfg_scale(cfg_scale, i / max(n - 1, 1), cfg_schedule)
        logits = logits_lib.guide(logits[:b], logits[b:], scale)
      rng, key = jax.random.split(rng)
      tok_B = logits_lib.sample_categorical(key, logits, temperature=temperature, top_k=top_k, top_p=top_p)
      tokens_BN = tokens_BN.at[:, i].set(tok_B)
      ids = jnp.concatenate([tok_B, tok_B]) if use_cfg else tok_B
      return cache, ids[:, None], tokens_BN, rng

    ids0 = (self.tokenizer.vocab_size + labels)[:, None]
    init = (cache, ids0, jnp.zeros((b, n), jnp.int32), rng)
    return jax.lax.fori_loop(0, n, step, init)[2]

  @functools.partial(jax.jit, static_argnums=0, static_argnames=("cfg_scale", "cfg_schedule"))
  def sample(self, params, label_B, rng, *, temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0,
             cfg_schedule="constant"):
    """Images [B, H, W, 3] in [-1, 1] for class labels [B]."""
    tokens = self.sample_tokens(params, label_B, rng, temperature=temperature, top_k=top_k, top_p=top_p,
                                cfg_scale=cfg_scale, cfg_schedule=cfg_schedule)
    return self.tokenizer.decode(self.tokenizer_params, tokens.reshape(-1, *self.grid))
