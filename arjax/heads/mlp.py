"""The small denoiser MLP shared by the continuous heads: residual blocks modulated (AdaLN) by the
backbone feature plus a sinusoidal time embedding (MAR / SiT style)."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from arjax.nn import layers


def _adaln(c_ND, width, n, name):
  out = layers.dense(n * width, ("embed", "mlp"), init=nn.initializers.zeros, name=name)(nn.silu(c_ND))
  return jnp.split(out, n, axis=-1)


class AdaLNMlp(nn.Module):
  """(x_t [N, C], t [N], feature z [N, D]) -> prediction [N, C]; output layer zero-initialised."""
  out_dim: int
  width: int = 256
  depth: int = 3

  @nn.compact
  def __call__(self, x_NC, t_N, z_ND):
    c = layers.TimeEmbed(self.width, name="time")(t_N) + layers.dense(self.width, ("embed", "mlp"), name="cond")(z_ND)
    h = layers.dense(self.width, ("embed", "mlp"), name="in")(x_NC)
    for i in range(self.depth):
      shift, scale, gate = _adaln(c, self.width, 3, f"adaln{i}")
      y = layers.modulate(nn.LayerNorm(1e-6, use_scale=False, use_bias=False)(h), shift, scale)
      y = layers.dense(self.width, ("embed", "mlp"), name=f"fc{i}a")(y)
      y = layers.dense(self.width, ("mlp", "embed"), name=f"fc{i}b")(nn.silu(y))
      h = h + gate * y
    shift, scale = _adaln(c, self.width, 2, "final_adaln")
    h = layers.modulate(nn.LayerNorm(1e-6, use_scale=False, use_bias=False)(h), shift, scale)
    return layers.dense(self.out_dim, ("embed", "mlp"), init=nn.initializers.zeros, name="out")(h)
