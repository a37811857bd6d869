"""The next-scale backbone shared by VAR (logits over codes) and FlowAR (features for a continuous head).

Sequence: [s_0^2 start tokens (condition embedding + pos_start) ; in_proj(inputs of scales 1..K-1)], plus
learned positions and a level (scale) embedding, a block_causal(scale areas) mask and AdaLN from the
condition. Scale-by-scale decoding feeds one scale at a time (`offset` = its first sequence index) through
the KV cache as one whole unit.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from arjax import conditioning
from arjax import masks
from arjax.nn import layers
from arjax.nn.transformer import Transformer, TransformerConfig

# What makes a Transformer VAR's; configs give depth, heads, mlp_ratio, drop_path, impl.
VAR_TRANSFORMER = dict(mlp="gelu_tanh", norm="layer", qk_norm="l2", qkv_bias=True, out_bias=True, pos="learned")


class ScaleNet(nn.Module):
  """(cond, inputs of scales >= 1 [B, n, C]) -> logits [B, L, V] (vocab_size > 0) or features [B, L, D]."""
  conditioner: conditioning.Conditioner
  sizes: tuple  # tokens per scale
  tcfg: TransformerConfig  # adaln=True, max_len=sum(sizes)
  vocab_size: int = 0

  @nn.compact
  def __call__(self, cond, feats_BNC, offset: int = 0, cache=None, train=False):
    """Rows [offset, offset + n): the start tokens when offset == 0, then in_proj(feats)."""
    d = self.tcfg.width
    init = nn.initializers.truncated_normal(math.sqrt(1 / d / 3))
    cond_BD = self.conditioner.embedder(d, init, name="cond")(cond)
    parts = []
    if offset == 0:
      pos_start = self.param("pos_start", nn.with_logical_partitioning(init, (None, "embed")), (self.sizes[0], d))
      parts.append(jnp.broadcast_to(cond_BD[:, None] + pos_start, (cond_BD.shape[0], self.sizes[0], d)))
    if feats_BNC is not None and feats_BNC.shape[1]:
      parts.append(layers.dense(d, (None, "embed"), name="word_embed")(feats_BNC.astype(cond_BD.dtype)))
    x_BLD = jnp.concatenate(parts, axis=1)
    n = x_BLD.shape[1]
    levels = np.repeat(np.arange(len(self.sizes)), self.sizes)[offset:offset + n]
    lvl = self.param("lvl_embed", nn.with_logical_partitioning(init, (None, "embed")), (len(self.sizes), d))
    h_BLD, cache = Transformer(self.tcfg, name="transformer")(
        x_BLD + lvl[levels], masks.block_causal(self.sizes), positions=jnp.arange(offset, offset + n),
        cond_BC=cond_BD, cache=cache, whole_unit=cache is not None, train=train,
        static_end=None if cache is None else offset + n)
    if not self.vocab_size:
      return h_BLD, cache
    return layers.dense(self.vocab_size, ("embed", "vocab"), name="head")(h_BLD).astype(jnp.float32), cache


def forward(net: ScaleNet, params, state, unit):
  """The sampler skeleton's forward for a scale: state.feed = (guided cond, inputs of this scale or None)."""
  cond, feats = state.feed
  return net.apply({"params": params}, cond, feats, unit.start, cache=state.cache)


def guided_feed(cond, x_BNC):
  """The next feed: x repeated for each half of a guided batch (rows of cond = B or 2B)."""
  rows = next(iter(cond.values())).shape[0]
  return cond, jnp.tile(x_BNC, (rows // x_BNC.shape[0],) + (1,) * (x_BNC.ndim - 1))
