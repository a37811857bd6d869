"""Next-token (raster) AR over VQ tokens, LlamaGen-style.

Sequence: [condition vector, t_0, ..., t_{N-2}] -> predicts [t_0, ..., t_{N-1}] under a causal mask. The
condition vector is the Conditioner's embedding (a class, or a pooled caption). With 2D RoPE, input i carries
the grid position of the token it predicts, so every query knows where its output goes
(rope_convention='llamagen' instead gives input i the grid position of token i - 1 and the condition input
an all-zero rotary table, which zeroes its q and k: LlamaGen's convention, for its converted weights).
Sampling is the sampler skeleton over N one-token units with a KV cache; CFG doubles the batch. Speculative
decoding (sampler option `decoding='sjd'|'draft'`, with `window`, `lantern_delta`, `lantern_k`, `drafter`) runs
arjax.sampling.speculative over the same net; `decode` returns the tokens with acceptance length and NFE per sample.
"""
from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from arjax import conditioning
from arjax import layout as layout_lib
from arjax import masks
from arjax.nn import layers
from arjax.nn.transformer import Transformer, TransformerConfig
from arjax.paradigms import base
from arjax.sampling import logits as logits_lib
from arjax.sampling import loop
from arjax.sampling import speculative

KEYS = ("width", "transformer", "rope_convention")  # beyond base.COND_KEYS


class NextTokenNet(nn.Module):
  """(condition, tokens) -> causal transformer -> logits over the V image tokens."""
  vocab_size: int
  conditioner: conditioning.Conditioner
  tcfg: TransformerConfig

  def setup(self):
    self.embed = nn.Embed(self.vocab_size, self.tcfg.width, embedding_init=nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("vocab", "embed")))
    self.cond = self.conditioner.embedder(self.tcfg.width)
    self.transformer = Transformer(self.tcfg)
    self.head = layers.Dense(self.vocab_size, kernel_init=nn.with_logical_partitioning(
        nn.initializers.zeros, ("embed", "vocab")))

  def __call__(self, x_BLD, positions, cache=None):
    h_BLD, cache = self.transformer(x_BLD, masks.causal(), positions=positions, cache=cache)
    return self.head(h_BLD).astype(jnp.float32), cache

  def inputs(self, cond, tokens_BL):
    """[condition vector ; token embeddings] [B, 1 + L, D]."""
    return jnp.concatenate([self.cond(cond)[:, None], self.embed(tokens_BL)], axis=1)

  def step_input(self, cond, token_B, first):
    """The input of one decoding step [B, 1, D]: the condition vector at step 0, else the previous token."""
    return jnp.where(first, self.cond(cond), self.embed(token_B))[:, None]

  def window_input(self, cond, tokens_BL, index_BL):
    """Inputs at sequence indices index_BL [B, L, D]: the condition vector at index 0, else the token before."""
    return jnp.where((index_BL == 0)[..., None], self.cond(cond)[:, None], self.embed(tokens_BL))


class NextToken(base.Paradigm):
  """The next-token paradigm (an arjax.interfaces.Paradigm)."""

  def __init__(self, cfg, tokenizer, tokenizer_params):
    super().__init__(cfg, tokenizer, tokenizer_params, KEYS)
    self.rope_convention = cfg.get("rope_convention", "predicted")
    if self.rope_convention not in ("predicted", "llamagen"):
      raise ValueError(f"model.rope_convention must be 'predicted' or 'llamagen', got {self.rope_convention!r}")
    rope2d = cfg.transformer.get("pos") == "rope2d"
    self.layout = layout_lib.grid_layout("token", self.grid, rope2d=rope2d)
    self.num_tokens = self.layout.length
    self.tcfg = TransformerConfig.make(cfg.transformer, width=cfg.width, max_len=self.num_tokens,
                                       rope_zero_negative=self.rope_convention == "llamagen")
    self.net = NextTokenNet(tokenizer.vocab_size, self.conditioner, self.tcfg)
    positions = jnp.asarray(self.layout.positions)
    if rope2d and self.rope_convention == "llamagen":  # input i sits at token i - 1; the condition at (-1, -1)
      positions = jnp.concatenate([jnp.full((1, 2), -1), positions[:-1]])
    self.input_positions = positions  # of inputs 0..N-1

  def preprocess(self, batch):
    """Images -> VQ tokens [B, N] with the frozen tokenizer; the conditioning entries pass through."""
    tokens = self.tokenizer.encode(self.tokenizer_params, batch["image"])
    return dict(self.conditioner.from_batch(batch), tokens=tokens.reshape(tokens.shape[0], -1))

  def _apply(self, params, fn, *args, **kw):
    return self.net.apply({"params": params}, *args, method=fn, **kw)

  def logits(self, params, cond, tokens_BN):
    """Teacher-forced logits [B, N, V]."""
    return self._apply(params, lambda m: m(m.inputs(cond, tokens_BN[:, :-1]), self.input_positions)[0])

  def init(self, rng, batch):
    cond = self.conditioner.example(1)
    tokens = jnp.zeros((1, self.num_tokens), jnp.int32)
    return self.net.init(rng, method=lambda m: m(m.inputs(cond, tokens[:, :-1]), self.input_positions))["params"]

  def loss(self, params, batch, rng, train=True):
    cond = self.conditioner.from_batch(batch)
    cond = self.conditioner.drop(cond, rng) if train else cond
    logits = self.logits(params, cond, batch["tokens"])
    nll = logits_lib.token_nll(logits, batch["tokens"])
    acc = (logits.argmax(-1) == batch["tokens"]).mean()
    return nll.mean(), dict(nll=nll.mean(), token_acc=acc)

  def nll(self, params, batch):
    """Per-example summed NLL (nats) of the token sequence given the condition."""
    return logits_lib.token_nll(self.logits(params, self.conditioner.from_batch(batch), batch["tokens"]),
                                batch["tokens"]).sum(-1)

  # ---- sampling: the skeleton's forward / sample / commit

  def _forward(self, params, state, unit):
    cond, token_B = state.feed
    pos = jax.lax.dynamic_slice_in_dim(self.input_positions, unit.start, 1, axis=0)
    return self._apply(params, lambda m: m(m.step_input(cond, token_B, unit.index == 0), pos, cache=state.cache))

  def _commit(self, state, x_B, unit):
    cond, token = state.feed
    token = jnp.tile(x_B, token.shape[0] // x_B.shape[0])  # the guided batch feeds both halves
    return state.out.at[:, unit.start].set(x_B), (cond, token), state.done_B

  def sample_tokens(self, params, cond, rng, opts):
    """Tokens [B, N] drawn token by token with a KV cache (`opts`: loop.options)."""
    guide = loop.guidance(opts)
    b = self.conditioner.batch_size(cond)
    cond = self.conditioner.double(cond) if guide.on else cond
    rows = self.conditioner.batch_size(cond)
    state = loop.init_state(out=jnp.zeros((b, self.num_tokens), jnp.int32), feed=(cond, jnp.zeros((rows,), jnp.int32)),
                            cache=self.tcfg.init_cache(rows, self.num_tokens), batch=b, rng=rng)
    draw = lambda params, feat, scale, unit, rng: logits_lib.draw(rng, feat[:, 0], scale, **opts)
    steps = loop.Steps(self._forward, draw, self._commit, fed_at_start=True)  # token k's feed at slot k
    return loop.run(steps, params, self.layout.sizes, state, guide).out

  def window_net(self, cond) -> speculative.Net:
    """This net as speculative decoding sees it: a forward over L inputs at per-row indices start_R + [0, L)
    (token 0 of a row is the token before start; the condition at index 0), through a per-row KV cache."""

    def forward(params, cache, tokens_RL, start_R):
      idx_RL = start_R[:, None] + jnp.arange(tokens_RL.shape[1])
      pos = self.input_positions[jnp.minimum(idx_RL, self.num_tokens - 1)]  # past the end: outputs never used
      return self._apply(params, lambda m: m(m.window_input(cond, tokens_RL, idx_RL), pos, cache=cache))

    return speculative.Net(forward, self.tcfg.init_cache)

  def codebook(self):
    """The tokenizer's code vectors [V, D], l2-normalised (the arjax VQs quantise on the unit sphere): the 2-D
    parameter named 'codebook' or 'embedding' with V rows."""
    flat = flax.traverse_util.flatten_dict(nn.meta.unbox(self.tokenizer_params or {}))
    hits = [v for k, v in flat.items() if k[-1] in ("codebook", "embedding") and jnp.ndim(v) == 2
            and jnp.shape(v)[0] == self.tokenizer.vocab_size]
    if len(hits) != 1:
      raise ValueError(f"lantern_delta > 0 needs one codebook [V={self.tokenizer.vocab_size}, D] ('codebook' or "
                       f"'embedding') in the tokenizer params; found {len(hits)}")
    c = jnp.asarray(hits[0], jnp.float32)
    return c / jnp.maximum(jnp.linalg.norm(c, axis=-1, keepdims=True), 1e-12)

  def speculative_tokens(self, params, cond, rng, opts):
    """(tokens [B, N], stats) by speculative decoding (`opts`: loop.options with speculative.OPTIONS)."""
    speculative.check(opts, self.tokenizer.vocab_size)
    guide = loop.guidance(opts)
    b = self.conditioner.batch_size(cond)
    cond = self.conditioner.double(cond) if guide.on else cond
    drafter = opts["drafter"]
    dnet = None if drafter is None else drafter.model.window_net(cond)
    nbrs = speculative.neighbours(self.codebook(), int(opts["lantern_k"])) if opts["lantern_delta"] > 0 else None
    return speculative.decode(self.window_net(cond), params, b, self.num_tokens, self.tokenizer.vocab_size, rng, opts,
                              dnet, None if drafter is None else drafter.params, nbrs)

  @loop.sampler(speculative.OPTIONS)
  def decode(self, params, cond, rng, opts):
    """(tokens [B, N], stats): stats per sample nfe (target passes), tokens_per_step (mean acceptance length:
    tokens per target pass), draft_nfe (drafter passes), and rounds (loop iterations for the batch)."""
    if opts["decoding"] == "plain":
      speculative.check(opts, self.tokenizer.vocab_size)
      tokens = self.sample_tokens(params, cond, rng, opts)
      ones = jnp.ones((tokens.shape[0],), jnp.int32)
      return tokens, dict(nfe=ones * self.num_tokens, tokens_per_step=ones.astype(jnp.float32), draft_nfe=0 * ones,
                          rounds=jnp.asarray(self.num_tokens, jnp.int32))
    return self.speculative_tokens(params, cond, rng, opts)

  @loop.sampler(speculative.OPTIONS)
  def sample(self, params, cond, rng, opts):
    """Images [B, H, W, 3] in [-1, 1] for `cond` ({'label': [B]} or {'caption': [B, Lc]})."""
    if opts["decoding"] == "plain":
      speculative.check(opts, self.tokenizer.vocab_size)
      tokens = self.sample_tokens(params, cond, rng, opts)
    else:
      tokens = self.speculative_tokens(params, cond, rng, opts)[0]
    return self.tokenizer.decode(self.tokenizer_params, tokens.reshape(-1, *self.grid))
