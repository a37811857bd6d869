"""TokenBridge's per-dimension AR head: p(token) = prod_j p(channel order[j] | channels order[<j], z).

A small causal transformer over the C channels of one token (in `order`). Input j is the backbone feature's
projection c (j = 0) or the embedding of channel order[j-1]'s grid index, from a table of its own (j > 0);
learned position embeddings; every block is AdaLN-modulated by c + a learned per-position vector; position j
has its own `levels`-way output layer and predicts channel order[j]. The head gets continuous values x (grid
values from the dimwise tokenizer) and quantises them for its cross-entropy (mean over channels, nats), and it
samples grid indices channel by channel with a KV cache and returns their values. Classifier-free guidance
(TokenBridge) acts on the backbone features: z = z_u + s (z_c - z_u) before the channel AR, with s the
scale of this MAR round (masked_ar's linear schedule: 1 + (scale - 1) * fraction of tokens known after it).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arjax import masks
from arjax.nn import layers
from arjax.nn.transformer import Transformer, TransformerConfig
from arjax.sampling import guidance
from arjax.sampling import logits as logits_lib
from arjax.tokenizers import dimwise as quant

ORDERS = ("data", "identity", "a permutation such as '2,0,3,1'")


def _param(module, name, shape, axes, init=nn.initializers.normal(0.02)):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape)


class DimwiseNet(nn.Module):
  """Teacher-forced logits [N, C, levels] from (z [N, D], grid indices in AR order [N, C]); `step` decodes one."""
  channels: int
  levels: int
  tcfg: TransformerConfig

  def setup(self):
    c, w, v = self.channels, self.tcfg.width, self.levels
    self.cond_proj = layers.dense(w, ("embed", "mlp"))
    self.cond_pos = _param(self, "cond_pos", (c, w), (None, "embed"))
    self.embed = _param(self, "embed", (c - 1, v, w), (None, "vocab", "embed"))
    self.out_kernel = _param(self, "out_kernel", (c, w, v), (None, "embed", "vocab"))
    self.out_bias = _param(self, "out_bias", (c, v), (None, "vocab"), nn.initializers.zeros)
    self.transformer = Transformer(self.tcfg)

  def __call__(self, z_ND, tok_NC):
    c_NW = self.cond(z_ND)
    prev_NJW = self.embed[jnp.arange(self.channels - 1), tok_NC[:, :-1]]
    x_NCW = jnp.concatenate([c_NW[:, None], prev_NJW], axis=1)
    h_NCW, _ = self.transformer(x_NCW, masks.causal(), cond_BC=c_NW[:, None] + self.cond_pos)
    return jnp.einsum("ncw,cwv->ncv", h_NCW, self.out_kernel) + self.out_bias

  def cond(self, z_ND):
    return self.cond_proj(z_ND)

  def step(self, c_NW, x_N1W, j, cache):
    """Position j (may be traced) with the KV cache: (logits [N, levels] of channel order[j], cache)."""
    h_N1W, cache = self.transformer(x_N1W, masks.causal(), cond_BC=(c_NW + self.cond_pos[j])[:, None], cache=cache)
    return h_N1W[:, 0] @ self.out_kernel[j] + self.out_bias[j], cache

  def embed_token(self, j, tok_N):
    """The input of position j + 1: channel order[j]'s embedding of tok_N (j < C - 1)."""
    return self.embed[j, tok_N]


class DimwiseHead:
  """A Head (arjax.interfaces) over grid values of `levels` levels; cfg: width, depth, heads (attention)."""

  def __init__(self, token_dim: int, cfg, *, levels: int, std_range=3.0, x_min=-5.0, x_max=5.0, order=None):
    if token_dim < 2:
      raise ValueError(f"the dimwise head needs tokens of >= 2 channels, got token_dim={token_dim}")
    quant.gaussian_levels(levels, std_range)  # validates levels / std_range
    self.grid = (int(levels), float(std_range), float(x_min), float(x_max))
    quant.dequantize(0, *self.grid)  # validates the range
    order = tuple(range(token_dim)) if order is None else tuple(int(i) for i in order)
    if sorted(order) != list(range(token_dim)):
      raise ValueError(f"model.head.order={order} must be a permutation of 0..{token_dim - 1}")
    self.token_dim, self.cfg, self.order = token_dim, cfg, order
    self.inverse = tuple(int(i) for i in np.argsort(order))
    self.tcfg = TransformerConfig(width=cfg.width, depth=cfg.depth, heads=cfg.get("heads", 4), mlp="gelu",
                                  norm="layer", qk_norm=True, qkv_bias=True, adaln=True, pos="learned",
                                  max_len=token_dim, impl="xla")
    self.net = DimwiseNet(token_dim, self.grid[0], self.tcfg)

  def init(self, rng, z_ND):
    return self.net.init(rng, z_ND, jnp.zeros((z_ND.shape[0], self.token_dim), jnp.int32))["params"]

  def tokens(self, x_NC):
    """Grid indices of x [N, C] in AR order."""
    return quant.quantize(x_NC, *self.grid)[:, jnp.asarray(self.order)]

  def logits(self, params, z_ND, x_NC):
    """Teacher-forced logits [N, C, levels], in AR order."""
    return self.net.apply({"params": params}, z_ND, self.tokens(x_NC)).astype(jnp.float32)

  def loss(self, params, z_ND, x_NC, rng):
    """Per-row cross-entropy [N] (nats, mean over channels); `rng` is unused."""
    del rng
    return jnp.mean(logits_lib.token_nll(self.logits(params, z_ND, x_NC), self.tokens(x_NC)), axis=-1)

  def sample_indices(self, params, z_ND, rng, temperature=1.0):
    """(grid indices [N, C] in channel layout, the logits they were drawn from [N, C, levels] in AR order)."""
    apply = lambda method, *args: self.net.apply({"params": params}, *args, method=method)
    n, last = z_ND.shape[0], self.token_dim - 1
    c_NW = apply(DimwiseNet.cond, z_ND)

    def body(carry, j_key):
      x_N1W, cache = carry
      j, key = j_key
      logits_NV, cache = apply(DimwiseNet.step, c_NW, x_N1W, j, cache)
      tok_N = logits_lib.draw(key, logits_NV.astype(jnp.float32), temperature=temperature)
      x_N1W = apply(DimwiseNet.embed_token, jnp.minimum(j, last - 1), tok_N)[:, None].astype(c_NW.dtype)  # unused
      # after the last channel; the cast keeps the carry's dtype where params are cast for inference (bf16)
      return (x_N1W, cache), (tok_N, logits_NV.astype(jnp.float32))

    carry = (c_NW[:, None], self.tcfg.init_cache(n, self.token_dim, c_NW.dtype))
    steps = (jnp.arange(self.token_dim), jax.random.split(rng, self.token_dim))
    _, (tok_CN, logits_CNV) = jax.lax.scan(body, carry, steps)
    return tok_CN.T[:, jnp.asarray(self.inverse)], jnp.moveaxis(logits_CNV, 0, 1)

  def sample(self, params, z_ND, rng, *, guide_scale=None, steps=None, temperature=1.0, solver=None):
    """Grid values [N, C]; with guide_scale, z_ND = [cond ; uncond] rows are combined first (`steps` and
    `solver` are accepted for interface parity and ignored)."""
    del steps, solver
    if guide_scale is not None:
      z_ND = guidance.combine(z_ND, guide_scale)
    return quant.dequantize(self.sample_indices(params, z_ND, rng, temperature)[0], *self.grid)


def build(token_dim: int, cfg, tokenizer, tokenizer_params) -> DimwiseHead:
  """The head for a dimwise tokenizer: its grid; cfg.order 'data' (tokenizer.channel_order), 'identity' or a
  permutation ('2,0,3,1' or a sequence)."""
  if not hasattr(tokenizer, "grid_args"):
    raise ValueError(f"model.head.kind='dimwise' needs the 'dimwise' tokenizer (its grid of levels), got "
                     f"{type(tokenizer).__name__}")
  spec = cfg.get("order", "data")
  if spec == "data":
    order = tokenizer.channel_order(tokenizer_params)
  elif spec == "identity":
    order = None
  else:
    try:
      order = tuple(int(i) for i in (spec.split(",") if isinstance(spec, str) else spec))
    except ValueError:
      raise ValueError(f"model.head.order={spec!r}: expected one of {ORDERS}") from None
  levels, std_range, x_min, x_max = tokenizer.grid_args
  return DimwiseHead(token_dim, cfg, levels=levels, std_range=std_range, x_min=x_min, x_max=x_max, order=order)
