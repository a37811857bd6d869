"""Next-scale prediction (VAR) over a multi-scale VQ tokenizer.

The network is arjax.nn.scale_net.ScaleNet with a vocabulary head (VAR's transformer: 6-way AdaLN from the
condition, final AdaLN, LayerNorm without affine, q/v biases, l2-normalised q.k with a learnable per-head
log scale, GELU-tanh MLP, drop-path). Scale k's input is word_embed(f_hat of scales < k, area-downsampled to
scale k); a block_causal(scale areas) mask lets every token see its own scale and all coarser ones.
Sampling: the sampler skeleton over scales, one forward pass per scale with a growing KV cache.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from arjax import layout as layout_lib
from arjax.nn import scale_net
from arjax.paradigms import base
from arjax.nn.transformer import TransformerConfig
from arjax.sampling import guidance
from arjax.sampling import logits as logits_lib
from arjax.sampling import loop

KEYS = ("width", "transformer")  # beyond base.COND_KEYS
SAMPLE_OPTIONS = dict(smooth=False)  # beyond guidance.DEFAULTS


class NextScale(base.Paradigm):
  """The next-scale paradigm (an arjax.interfaces.Paradigm)."""

  def __init__(self, cfg, tokenizer, tokenizer_params):
    super().__init__(cfg, tokenizer, tokenizer_params, KEYS)
    self.patch_nums = tuple(tokenizer.patch_nums)
    self.layout = layout_lib.scale_layout(self.patch_nums, tokenizer.grid)
    self.sizes, self.starts, self.num_tokens = self.layout.sizes, self.layout.starts, self.layout.length
    self.tcfg = TransformerConfig.make({**scale_net.VAR_TRANSFORMER, **dict(cfg.transformer)}, width=cfg.width,
                                       adaln=True, max_len=self.num_tokens)
    self.net = scale_net.ScaleNet(self.conditioner, self.sizes, self.tcfg, tokenizer.vocab_size)

  def preprocess(self, batch):
    """Images -> flat multi-scale tokens [B, L] and teacher-forcing inputs [B, L - pn_0^2, C]."""
    tokens = self.tokenizer.encode_scales(self.tokenizer_params, batch["image"])
    inputs = self.tokenizer.teacher_inputs(self.tokenizer_params, tokens)
    flat = jnp.concatenate([t.reshape(t.shape[0], -1) for t in tokens], axis=1)
    return dict(self.conditioner.from_batch(batch), tokens=flat, inputs=inputs)

  def token_maps(self, tokens_BL):
    """Flat tokens [B, L] -> token maps [B, pn, pn] per scale."""
    return [tokens_BL[:, s:s + p * p].reshape(-1, p, p) for s, p in zip(self.starts, self.patch_nums)]

  def init(self, rng, batch):
    inputs = jnp.zeros((1, self.num_tokens - self.sizes[0], self.tokenizer.code_dim), jnp.float32)
    return self.net.init({"params": rng, "dropout": rng}, self.conditioner.example(1), inputs)["params"]

  def logits(self, params, cond, inputs_BNC, rng=None, train=False):
    """Teacher-forced logits [B, L, V] for all scales in one block-causal pass."""
    rngs = {"dropout": rng} if train else None
    return self.net.apply({"params": params}, cond, inputs_BNC, 0, train=train, rngs=rngs)[0]

  def loss(self, params, batch, rng, train=True):
    drop_rng, path_rng = jax.random.split(rng)
    cond = self.conditioner.from_batch(batch)
    cond = self.conditioner.drop(cond, drop_rng) if train else cond
    logits = self.logits(params, cond, batch["inputs"], path_rng, train)
    nll = logits_lib.token_nll(logits, batch["tokens"])
    acc = (logits.argmax(-1) == batch["tokens"]).mean()
    return nll.mean(), dict(nll=nll.mean(), token_acc=acc, nll_last_scale=nll[:, self.starts[-1]:].mean())

  # ---- sampling: the skeleton's forward (scale_net.forward) / sample / commit

  def _draw(self, opts, params, logits, scale, unit, rng):
    """(token ids [B, n], their code vectors [B, n, C]); `smooth` is VAR's soft Gumbel mixture of codes."""
    logits = logits if scale is None else guidance.combine(logits, scale)
    key, gkey = jax.random.split(rng)
    idx = logits_lib.draw(key, logits, **opts)
    codes_VC = self.tokenizer.embed(self.tokenizer_params, jnp.arange(self.tokenizer.vocab_size))
    if not opts["smooth"]:
      return idx, codes_VC[idx]
    flat = logits.reshape(-1, logits.shape[-1])
    filtered = logits_lib.filter_logits(flat, opts["top_k"], opts["top_p"])
    tau = jnp.maximum(0.27 * (1 - unit.progress * 0.95), 0.005)
    soft = jax.nn.softmax((filtered * (1 + unit.progress) + jax.random.gumbel(gkey, flat.shape)) / tau, axis=-1)
    return idx, (soft @ codes_VC).reshape(*idx.shape, -1)

  def _commit(self, state, x, unit):
    idx_Bn, h_BnC = x
    b, pn = idx_Bn.shape[0], self.patch_nums[unit.index]
    f_hat, nxt = self.tokenizer.next_input(self.tokenizer_params, unit.index, state.out["f_hat"],
                                           h_BnC.reshape(b, pn, pn, -1))
    out = dict(tokens=state.out["tokens"].at[:, unit.start:unit.start + unit.size].set(idx_Bn), f_hat=f_hat)
    cond = state.feed[0]
    feed = scale_net.guided_feed(cond, nxt.reshape(b, -1, nxt.shape[-1])) if unit.index + 1 < len(self.sizes) else (
        cond, None)
    return out, feed, state.done_B

  def sample_tokens(self, params, cond, rng, opts):
    """(flat tokens [B, L], final f_hat [B, h, w, C]): one forward pass per scale with a KV cache."""
    guide = loop.guidance(opts)
    b = self.conditioner.batch_size(cond)
    cond = self.conditioner.double(cond) if guide.on else cond
    rows = self.conditioner.batch_size(cond)
    out = dict(tokens=jnp.zeros((b, self.num_tokens), jnp.int32),
               f_hat=jnp.zeros((b, *self.tokenizer.grid, self.tokenizer.code_dim), jnp.float32))
    state = loop.init_state(out, (cond, None), self.tcfg.init_cache(rows, self.num_tokens), b, rng)
    steps = loop.Steps(functools.partial(scale_net.forward, self.net), functools.partial(self._draw, opts),
                       self._commit)
    out = loop.run(steps, params, self.sizes, state, guide).out
    return out["tokens"], out["f_hat"]

  @loop.sampler(extra=SAMPLE_OPTIONS)
  def sample(self, params, cond, rng, opts):
    """Images [B, H, W, 3] in [-1, 1] for `cond`."""
    return self.tokenizer.fhat_to_image(self.tokenizer_params, self.sample_tokens(params, cond, rng, opts)[1])
