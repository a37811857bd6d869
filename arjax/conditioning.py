"""The one conditioner: what `cond` holds, its embedding, the null condition, label dropout and CFG doubling.

`cond` is a dict pytree. Class-conditional models read {'label': int [B]}; caption-conditional ones read
{'caption': uint8 [B, Lc]} (utf-8 bytes, 0-padded, as the data pipeline gives them). The null condition
(label dropout in training, the unconditional half of classifier-free guidance) is label `num_classes`
or the all-zero caption. Guidance itself (the combination rule and its schedules) is in
arjax/sampling/guidance.py.

  conditioner = Conditioner.make(config.model)
  cond = conditioner.from_batch(batch)                 # training
  cond = conditioner.drop(cond, rng) if train else cond
  cond2 = conditioner.double(cond)                     # sampling with CFG: [cond ; null]
  c_BD = conditioner.embedder(width)(cond)             # inside a flax module
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from arjax.nn import layers

KINDS = ("class", "caption")
KEYS = {"class": "label", "caption": "caption"}


@dataclasses.dataclass(frozen=True)
class Conditioner:
  """How a paradigm is conditioned; hashable, so it can sit on a jitted paradigm."""
  kind: str = "class"
  num_classes: int = 1
  label_drop: float = 0.0  # probability that a training row gets the null condition
  caption_len: int = 64

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"model.cond must be one of {KINDS}, got {self.kind!r}")
    if self.num_classes < 1 or not 0.0 <= self.label_drop < 1.0:
      raise ValueError(f"model.num_classes must be >= 1 and model.label_drop in [0, 1); got "
                       f"{self.num_classes}, {self.label_drop}")

  @classmethod
  def make(cls, model_cfg):
    """From a model config section: cond ('class' default), num_classes, label_drop."""
    return cls(kind=model_cfg.get("cond", "class"), num_classes=int(model_cfg.num_classes),
               label_drop=float(model_cfg.get("label_drop", 0.0)))

  @property
  def key(self) -> str:
    """The entry of `cond` (and of a data batch) this conditioner reads."""
    return KEYS[self.kind]

  def get(self, cond):
    """The condition array of `cond`; one clear error if it is missing or mis-shaped."""
    if not isinstance(cond, dict) or self.key not in cond:
      got = sorted(cond) if isinstance(cond, dict) else type(cond).__name__
      raise ValueError(f"a {self.kind}-conditional model needs cond={{'{self.key}': ...}}, got {got}")
    x = jnp.asarray(cond[self.key])
    want = 1 if self.kind == "class" else 2
    if x.ndim != want:
      raise ValueError(f"cond['{self.key}'] must have {want} dims ([B]{'' if want == 1 else ', Lc'}), got "
                       f"shape {x.shape}")
    return x

  def from_batch(self, batch):
    """The conditioning entries of a training batch."""
    return {self.key: batch[self.key]}

  def batch_size(self, cond) -> int:
    return self.get(cond).shape[0]

  def null(self, cond):
    """The null condition with the batch shape of `cond`."""
    x = self.get(cond)
    return {self.key: jnp.full_like(x, self.num_classes) if self.kind == "class" else jnp.zeros_like(x)}

  def drop(self, cond, rng):
    """Label dropout: each row is replaced by the null condition with probability label_drop."""
    if self.label_drop <= 0:
      return cond
    x, null = self.get(cond), self.null(cond)[self.key]
    drop_B = jax.random.bernoulli(rng, self.label_drop, x.shape[:1])
    return {self.key: jnp.where(drop_B.reshape((-1,) + (1,) * (x.ndim - 1)), null, x)}

  def double(self, cond):
    """[cond ; null]: the batch of a classifier-free-guided forward pass."""
    x, null = self.get(cond), self.null(cond)[self.key]
    return {self.key: jnp.concatenate([x, null])}

  def example(self, batch: int = 1):
    """The null condition for `batch` rows (init, shapes)."""
    if self.kind == "class":
      return {self.key: jnp.full((batch,), self.num_classes, jnp.int32)}
    return {self.key: jnp.zeros((batch, self.caption_len), jnp.uint8)}

  def embedder(self, width: int, init=nn.initializers.normal(0.02), name=None):
    """The flax module turning `cond` into one vector [B, width] (class or pooled caption)."""
    return CondEmbed(self, width, init, name=name)


class CondEmbed(nn.Module):
  """cond -> [B, D]: a class table (num_classes + 1 rows, the last is null), or a caption encoder
  (byte + position embeddings, mean over the non-pad bytes, MLP; an empty caption is the learned null)."""
  conditioner: Conditioner
  width: int
  embed_init: object = nn.initializers.normal(0.02)

  @nn.compact
  def __call__(self, cond):
    c = self.conditioner
    table = lambda n, name: nn.Embed(n, self.width, name=name, embedding_init=nn.with_logical_partitioning(
        self.embed_init, ("vocab", "embed")))
    x = c.get(cond)
    if c.kind == "class":
      return table(c.num_classes + 1, "class_embed")(x)
    bytes_BL = x.astype(jnp.int32)
    keep_BL = (bytes_BL > 0).astype(jnp.float32)
    h_BLD = table(256, "byte_embed")(bytes_BL) + table(bytes_BL.shape[1], "pos_embed")(jnp.arange(bytes_BL.shape[1]))
    pooled_BD = (h_BLD * keep_BL[..., None]).sum(1) / jnp.maximum(keep_BL.sum(1, keepdims=True), 1.0)
    h_BD = layers.Dense(self.width, name="fc2")(nn.gelu(layers.Dense(self.width, name="fc1")(pooled_BD)))
    null_D = self.param("null", nn.with_logical_partitioning(self.embed_init, ("embed",)), (self.width,))
    return jnp.where(keep_BL.sum(1, keepdims=True) > 0, h_BD, null_D.astype(h_BD.dtype))
