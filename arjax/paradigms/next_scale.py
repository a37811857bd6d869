"""Class-conditional next-scale prediction (VAR) over a multi-scale VQ tokenizer.

Sequence: [pn_0^2 start tokens (class embedding + pos_start) ; word_embed(f_hat of scales < k,
area-downsampled to scale k) for k = 1..K-1], plus learned positions and a level (scale) embedding.
A block_causal(scale areas) mask lets every token see its own scale and all coarser ones; the
transformer is VAR's (6-way AdaLN from the class embedding, final AdaLN, LayerNorm without affine,
q/v biases, l2-normalised q.k with a learnable per-head log scale, GELU-tanh MLP, drop-path).
Sampling generates a whole scale per step with a growing KV cache: K forward passes in all.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arjax import cache as cache_lib
from arjax import config as config_lib
from arjax import masks
from arjax.nn import layers
from arjax.nn.transformer import Transformer
from arjax.sampling import logits as logits_lib

# What makes a Transformer VAR's; configs give depth, heads, mlp_ratio, drop_path, impl.
VAR_TRANSFORMER = dict(mlp="gelu_tanh", norm="layer", qk_norm="l2", qkv_bias=True, out_bias=True, pos="learned")


class NextScaleNet(nn.Module):
  """Start tokens / scale inputs + class AdaLN -> block-causal transformer -> logits over V codes
  (vocab_size=0: the final features [B, L, D] instead, for a continuous head as in FlowAR)."""
  vocab_size: int
  num_classes: int
  width: int
  patch_nums: tuple
  transformer: dict

  @nn.compact
  def __call__(self, label_B, feats_BNC, offset: int = 0, cache=None, train=False):
    """Rows [offset, offset + n): the start tokens when offset == 0, then word_embed(feats)."""
    d, sizes = self.width, tuple(p * p for p in self.patch_nums)
    init = nn.with_logical_partitioning(nn.initializers.truncated_normal(math.sqrt(1 / d / 3)), (None, "embed"))
    cond_BD = nn.Embed(self.num_classes + 1, d, embedding_init=init, name="class_emb")(label_B)
    parts = []
    if offset == 0:
      pos_start = self.param("pos_start", init, (sizes[0], d))
      parts.append(jnp.broadcast_to(cond_BD[:, None] + pos_start, (label_B.shape[0], sizes[0], d)))
    if feats_BNC is not None and feats_BNC.shape[1]:
      parts.append(layers.dense(d, (None, "embed"), name="word_embed")(feats_BNC.astype(cond_BD.dtype)))
    x_BLD = jnp.concatenate(parts, axis=1)
    n = x_BLD.shape[1]
    levels = np.repeat(np.arange(len(sizes)), sizes)[offset:offset + n]
    x_BLD = x_BLD + self.param("lvl_embed", init, (len(sizes), d))[levels]
    h_BLD, cache = Transformer(**self.transformer, adaln=True, max_len=sum(sizes), name="transformer")(
        x_BLD, masks.block_causal(sizes), positions=jnp.arange(offset, offset + n), cond_BC=cond_BD,
        cache=cache, train=train)
    if not self.vocab_size:
      return h_BLD, cache
    logits = layers.dense(self.vocab_size, ("embed", "vocab"), name="head")(h_BLD)
    return logits.astype(jnp.float32), cache


class NextScale:
  """The next-scale paradigm as a Trainable: preprocess, init, loss, logits, sample_tokens, sample."""

  KEYS = ("name", "num_classes", "width", "label_drop", "transformer")

  def __init__(self, cfg, tokenizer, tokenizer_params):
    config_lib.check_keys(cfg, self.KEYS, "model")
    config_lib.check_keys(cfg.transformer, Transformer.__dataclass_fields__.keys() - {"parent", "name", "adaln", "max_len"},
                          "model.transformer")
    self.cfg = cfg
    self.tokenizer, self.tokenizer_params = tokenizer, tokenizer_params
    self.patch_nums = tuple(tokenizer.patch_nums)
    self.sizes = tuple(p * p for p in self.patch_nums)
    self.starts = tuple(int(s) for s in np.cumsum((0,) + self.sizes[:-1]))
    self.num_tokens = sum(self.sizes)
    self.num_classes = cfg.num_classes
    tcfg = {**VAR_TRANSFORMER, **dict(cfg.transformer)}
    self.net = NextScaleNet(tokenizer.vocab_size, cfg.num_classes, cfg.width, self.patch_nums, tcfg)

  def preprocess(self, batch):
    """Images -> flat multi-scale tokens [B, L] and teacher-forcing inputs [B, L - pn_0^2, C]."""
    tokens = self.tokenizer.encode_scales(self.tokenizer_params, batch["image"])
    inputs = self.tokenizer.teacher_inputs(self.tokenizer_params, tokens)
    flat = jnp.concatenate([t.reshape(t.shape[0], -1) for t in tokens], axis=1)
    return dict(tokens=flat, inputs=inputs, label=batch["label"])

  def init(self, rng, batch):
    inputs = jnp.zeros((1, self.num_tokens - self.sizes[0], self.tokenizer.code_dim), jnp.float32)
    return self.net.init({"params": rng, "dropout": rng}, jnp.zeros((1,), jnp.int32), inputs)["params"]

  def logits(self, params, label_B, inputs_BNC, rng=None, train=False):
    """Teacher-forced logits [B, L, V] for all scales in one block-causal pass."""
    rngs = {"dropout": rng} if train else None
    return self.net.apply({"params": params}, label_B, inputs_BNC, 0, train=train, rngs=rngs)[0]

  def loss(self, params, batch, rng, train=True):
    tokens, label = batch["tokens"], batch["label"]
    drop_rng, path_rng = jax.random.split(rng)
    if train and self.cfg.label_drop > 0:
      label = jnp.where(jax.random.bernoulli(drop_rng, self.cfg.label_drop, label.shape), self.num_classes, label)
    logits = self.logits(params, label, batch["inputs"], path_rng, train)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
    acc = (logits.argmax(-1) == tokens).mean()
    last = nll[:, self.starts[-1]:].mean()
    return nll.mean(), dict(nll=nll.mean(), token_acc=acc, nll_last_scale=last)

  def sample_tokens(self, params, label_B, rng, *, temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0,
                    cfg_schedule="linear", smooth=False):
    """(token maps [B, pn, pn] per scale, final f_hat): one forward pass per scale with a KV cache."""
    b, tok = label_B.shape[0], self.tokenizer
    use_cfg = cfg_scale != 1.0
    labels = jnp.concatenate([label_B, jnp.full_like(label_B, self.num_classes)]) if use_cfg else label_B
    t = self.net.transformer
    cache = cache_lib.init(t["depth"], labels.shape[0], self.num_tokens, t.get("kv_heads") or t["heads"],
                           self.cfg.width // t["heads"])
    codes_VC = tok.embed(self.tokenizer_params, jnp.arange(tok.vocab_size))
    f_hat = jnp.zeros((b, *tok.grid, tok.code_dim), jnp.float32)
    feats, out = None, []
    n_scales = len(self.patch_nums)
    for si, pn in enumerate(self.patch_nums):
      logits, cache = self.net.apply({"params": params}, labels, feats, self.starts[si], cache=cache)
      progress = si / max(n_scales - 1, 1)
      if use_cfg:
        logits = logits_lib.guide(logits[:b], logits[b:], logits_lib.cfg_scale(cfg_scale, progress, cfg_schedule))
      rng, key, gkey = jax.random.split(rng, 3)
      flat = logits.reshape(-1, logits.shape[-1])
      idx = logits_lib.sample_categorical(key, flat, temperature=temperature, top_k=top_k, top_p=top_p)
      out.append(idx.reshape(b, pn, pn))
      if smooth:  # VAR's visual smoothing: a soft Gumbel mixture of codes instead of the drawn one
        filtered = logits_lib.top_p_filter(logits_lib.top_k_filter(flat, top_k), top_p)
        tau = max(0.27 * (1 - progress * 0.95), 0.005)
        g = jax.random.gumbel(gkey, flat.shape)
        h = jax.nn.softmax((filtered * (1 + progress) + g) / tau, axis=-1) @ codes_VC
      else:
        h = codes_VC[idx]
      f_hat, nxt = tok.next_input(self.tokenizer_params, si, f_hat, h.reshape(b, pn, pn, -1))
      if si < n_scales - 1:
        feats = nxt.reshape(b, -1, tok.code_dim)
        feats = jnp.concatenate([feats, feats]) if use_cfg else feats
    return out, f_hat

  @functools.partial(jax.jit, static_argnums=0, static_argnames=("cfg_scale", "cfg_schedule", "smooth"))
  def sample(self, params, label_B, rng, *, temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0,
             cfg_schedule="linear", smooth=False):
    """Images [B, H, W, 3] in [-1, 1] for class labels [B]."""
    _, f_hat = self.sample_tokens(params, label_B, rng, temperature=temperature, top_k=top_k, top_p=top_p,
                                  cfg_scale=cfg_scale, cfg_schedule=cfg_schedule, smooth=smooth)
    return self.tokenizer.fhat_to_image(self.tokenizer_params, f_hat)
