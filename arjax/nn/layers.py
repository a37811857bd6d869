"""Small building blocks: norms, MLPs, AdaLN modulation, logically-partitioned dense layers, time embeddings."""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from arjax.nn import quant

default_init = nn.initializers.xavier_uniform()


class Dense(nn.Dense):
  """nn.Dense (same parameters) whose kernel may be bf16 (f32 accumulation) or int8 (arjax.nn.quant)."""
  promote_dtype: Any = quant.promote_dtype
  dot_general: Any = quant.dot_general


class DenseGeneral(nn.DenseGeneral):
  """nn.DenseGeneral (same parameters) whose kernel may be bf16 or int8 (arjax.nn.quant)."""
  promote_dtype: Any = quant.promote_dtype
  dot_general: Any = quant.dot_general


def dense(features, axes: Sequence[str], *, use_bias=True, init=default_init, name=None, dtype=None):
  """Dense whose kernel carries logical axis names (bias gets the output axis)."""
  return Dense(features, use_bias=use_bias, name=name, dtype=dtype,
                  kernel_init=nn.with_logical_partitioning(init, tuple(axes)),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[-1],)))


def norm(kind: str, name=None, use_scale=True, eps: float = 1e-6):
  """'rms' or 'layer' normalisation, scale over the 'embed' axis."""
  if kind == "rms":
    return nn.RMSNorm(epsilon=eps, use_scale=use_scale, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)))
  if kind == "layer":
    return nn.LayerNorm(epsilon=eps, use_scale=use_scale, use_bias=use_scale, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))
  raise ValueError(f"norm kind must be 'rms' or 'layer', got {kind!r}")


class Mlp(nn.Module):
  """SwiGLU or GELU(-tanh) feed-forward."""
  hidden: int
  kind: str = "swiglu"

  @nn.compact
  def __call__(self, x_BLD):
    d = x_BLD.shape[-1]
    if self.kind == "swiglu":
      gate = dense(self.hidden, ("embed", "mlp"), use_bias=False, name="gate")(x_BLD)
      up = dense(self.hidden, ("embed", "mlp"), use_bias=False, name="up")(x_BLD)
      h = nn.silu(gate) * up
    elif self.kind in ("gelu", "gelu_tanh"):
      h = dense(self.hidden, ("embed", "mlp"), name="up")(x_BLD)
      h = nn.gelu(h, approximate=self.kind == "gelu_tanh")
    else:
      raise ValueError(f"mlp kind must be 'swiglu', 'gelu' or 'gelu_tanh', got {self.kind!r}")
    return dense(d, ("mlp", "embed"), use_bias=self.kind != "swiglu", name="down")(h)


class AdaLNModulation(nn.Module):
  """cond [B, C] or per-token [B, L, C] -> n chunks of [B, 1 or L, D] (zero-initialised).

  Chunks are (shift, scale[, gate]) groups of 3 (or 2: shift, scale). Where keep_BL is False they
  are the identity modulation: shift = scale = 0, gate = 1.
  """
  features: int
  n: int

  @nn.compact
  def __call__(self, cond_BC, keep_BL=None):
    out = dense(self.n * self.features, ("embed", "mlp"), init=nn.initializers.zeros,
                name="proj")(nn.silu(cond_BC))
    if out.ndim == 2:
      out = out[:, None, :]
    chunks = jnp.split(out, self.n, axis=-1)
    if keep_BL is None:
      return chunks
    keep = keep_BL[..., None]
    is_gate = lambda i: self.n % 3 == 0 and i % 3 == 2
    return [jnp.where(keep, c, 1.0 if is_gate(i) else 0.0) for i, c in enumerate(chunks)]


def timestep_embedding(t_N, dim: int, max_period: float = 10000.0):
  """Sinusoidal embedding [N, dim] of (float) times t_N."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t_N, jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimeEmbed(nn.Module):
  """Sinusoidal features -> 2-layer MLP -> [..., width]."""
  width: int
  freq_dim: int = 128

  @nn.compact
  def __call__(self, t):
    h = dense(self.width, ("embed", "mlp"), name="fc1")(timestep_embedding(t, self.freq_dim))
    return dense(self.width, ("mlp", "embed"), name="fc2")(nn.silu(h))


def l2_normalize(x, axis=-1):
  """x / ||x|| along `axis` (zero vectors stay zero)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis, keepdims=True), 1e-24))


def modulate(x_BLD, shift_B1D, scale_B1D):
  return x_BLD * (1 + scale_B1D) + shift_B1D


def cast_floating(tree, dtype):
  """Casts floating leaves of a pytree to dtype (bf16 compute over f32 params)."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
