"""Single-scale VQ tokenizer with l2-normalised (cosine) codes, LlamaGen/ViT-VQGAN style.

image -> conv Encoder -> 1x1 conv to `code_dim` -> l2-normalise -> nearest unit code (max cosine)
-> straight-through -> 1x1 conv back -> conv Decoder -> image. Tokens are int32 [B, h, w] with
h = w = image_size / 2 ** (len(ch_mult) - 1).

Loss = rec (cfg.rec_loss: 'mse', 'l1' or 'mse+l1', on the [-1, 1] scale) + codebook + beta * commitment,
the last two being mean squared distances between the unit latent and its unit code (one with the
latent, one with the code held fixed).

`params` is the inner flax 'params' collection (apply with `{'params': params}`); the codebook is
`params['codebook']` [K, code_dim], stored unnormalised and normalised on use.

`maintain(params, batch, rng)` (pure, jittable) restarts dead codes: every code no latent of the batch
selected is replaced by a distinct unit latent of the batch, sampled with probability proportional to its
quantisation error (1 - cosine to its code), so restarts go where the codebook fits worst. The trainer
calls maintain at step 0 (0 % maintain_every == 0) before the first update; that call is the codebook
initialisation: all codes no random-init latent picks (usually most of them) are set to encoder latents.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from arjax.eval.metrics import psnr
from arjax.nn import conv as conv_lib
from arjax.nn.layers import l2_normalize

HIGHEST = jax.lax.Precision.HIGHEST
DEFAULTS = dict(name="vq", image_size=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8,
                codebook_size=256, code_dim=8, beta=0.25, rec_loss="mse+l1")
REC_LOSSES = ("mse", "l1", "mse+l1")


def cosine_scores(z_ND, codebook_KD):
  """Cosine similarity [N, K] between latents and codes (both normalised here)."""
  return jnp.einsum("nd,kd->nk", l2_normalize(z_ND), l2_normalize(codebook_KD), precision=HIGHEST)


def nearest_code(z_ND, codebook_KD):
  """Index int32 [N] of the code with the highest cosine similarity to each latent."""
  return jnp.argmax(cosine_scores(z_ND, codebook_KD), axis=-1).astype(jnp.int32)


def quantize(z_BhwD, codebook_KD):
  """(straight-through unit codes [B,h,w,D], indices int32 [B,h,w], codebook loss, commitment loss)."""
  z = l2_normalize(z_BhwD)
  idx = nearest_code(z.reshape(-1, z.shape[-1]), codebook_KD).reshape(z.shape[:-1])
  z_q = l2_normalize(codebook_KD)[idx].astype(z.dtype)
  codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(z) - z_q))
  commit_loss = jnp.mean(jnp.square(z - jax.lax.stop_gradient(z_q)))
  return z + jax.lax.stop_gradient(z_q - z), idx, codebook_loss, commit_loss


def rec_loss(rec_BHWC, x_BHWC, kind: str):
  """Mean reconstruction error: 'mse', 'l1' or their sum 'mse+l1'."""
  err = rec_BHWC.astype(jnp.float32) - x_BHWC.astype(jnp.float32)
  mse, l1 = jnp.mean(jnp.square(err)), jnp.mean(jnp.abs(err))
  return {"mse": mse, "l1": l1, "mse+l1": mse + l1}[kind]


def code_stats(idx, codebook_size: int):
  """(fraction of codes used, perplexity of the code histogram) over all indices in `idx`."""
  counts = jnp.bincount(idx.reshape(-1), length=codebook_size)
  p = counts / idx.size
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jnp.mean(counts > 0), jnp.exp(entropy)


class VQNet(nn.Module):
  """Encoder + projections + codebook + decoder; the methods are the tokenizer's pieces."""
  stack: conv_lib.ConvConfig
  codebook_size: int
  code_dim: int

  def setup(self):
    width = self.stack.width(-1)
    self.encoder = conv_lib.Encoder(self.stack, width)
    self.quant_proj = conv_lib.conv(self.code_dim, 1)
    self.post_proj = conv_lib.conv(width, 1)
    self.decoder = conv_lib.Decoder(self.stack)
    init = lambda key, shape: l2_normalize(jax.random.normal(key, shape))
    self.codebook = self.param("codebook", init, (self.codebook_size, self.code_dim))

  def __call__(self, x_BHWC):
    """(reconstruction, indices, codebook loss, commitment loss)."""
    z_q, idx, codebook_loss, commit_loss = quantize(self.latents(x_BHWC), self.codebook)
    return self.decode_codes(z_q), idx, codebook_loss, commit_loss

  def latents(self, x_BHWC):
    """Images -> unnormalised pre-quantisation latents [B, h, w, code_dim]."""
    return self.quant_proj(self.encoder(x_BHWC))

  def decode_codes(self, z_BhwD):
    """Unit code vectors [B, h, w, code_dim] -> images [B, H, W, 3] (unclipped)."""
    return self.decoder(self.post_proj(z_BhwD))

  def lookup(self, tokens_Bhw):
    """Token ids -> unit code vectors [B, h, w, code_dim]."""
    return l2_normalize(self.codebook)[tokens_Bhw]


class VQTokenizer:
  """VQ tokenizer as a Trainable (init, loss, maintain) with encode/decode, grid, vocab_size, kind."""
  kind = "discrete"

  def __init__(self, cfg: ml_collections.ConfigDict):
    c, self.image_size, self.grid, stack = conv_lib.autoencoder_config(cfg, DEFAULTS, REC_LOSSES)
    self.cfg = c
    self.vocab_size = int(c["codebook_size"])
    self.net = VQNet(stack, self.vocab_size, int(c["code_dim"]))

  def _images(self, batch):
    return conv_lib.batch_images(batch, self.image_size)

  def _apply(self, params, method, *args):
    return self.net.apply({"params": params}, *args, method=method)

  def init(self, rng, batch):
    """The inner 'params' collection (not {'params': ...})."""
    return self.net.init(rng, self._images(batch)[:1])["params"]

  def loss(self, params, batch, rng, train=True):
    """(rec + codebook + beta * commitment, metrics); rng and train are unused (deterministic)."""
    del rng, train
    x = self._images(batch)
    rec, idx, codebook_loss, commit_loss = self._apply(params, VQNet.__call__, x)
    rec_l = rec_loss(rec, x, self.cfg["rec_loss"])
    loss = rec_l + codebook_loss + self.cfg["beta"] * commit_loss
    usage, perplexity = code_stats(idx, self.vocab_size)
    return loss, dict(loss=loss, rec_loss=rec_l, codebook_loss=codebook_loss, commit_loss=commit_loss,
                      psnr=psnr(rec, x), usage=usage, perplexity=perplexity)

  def maintain(self, params, batch, rng):
    """Dead-code restart: codes unused in the batch become distinct unit latents of the batch."""
    z = l2_normalize(self._apply(params, VQNet.latents, self._images(batch)).astype(jnp.float32))
    z_ND = z.reshape(-1, z.shape[-1])
    codebook = params["codebook"]
    scores = cosine_scores(z_ND, codebook)
    counts = jnp.bincount(jnp.argmax(scores, -1), length=self.vocab_size)
    logp = jnp.log(jnp.maximum(1.0 - jnp.max(scores, -1), 0.0) + 1e-6)
    n, k = z_ND.shape[0], self.vocab_size
    if n >= k:  # Gumbel top-k: k distinct latents, sampled without replacement
      pick = jax.lax.top_k(logp + jax.random.gumbel(rng, (n,)), k)[1]
    else:
      pick = jax.random.categorical(rng, logp, shape=(k,))
    new = jnp.where((counts == 0)[:, None], z_ND[pick].astype(codebook.dtype), codebook)
    return {**params, "codebook": new}

  def encode(self, params, images_BHWC):
    """Images [B, H, W, 3] in [-1, 1] -> tokens int32 [B, h, w]."""
    z = self._apply(params, VQNet.latents, self._images(dict(image=images_BHWC)))
    return nearest_code(z.reshape(-1, z.shape[-1]), params["codebook"]).reshape(z.shape[:-1])

  def decode(self, params, tokens_Bhw):
    """Tokens int32 [B, h, w] -> images [B, H, W, 3] clipped to [-1, 1]."""
    if tokens_Bhw.ndim != 3 or tuple(tokens_Bhw.shape[1:]) != self.grid:
      raise ValueError(f"tokens must be [B, {self.grid[0]}, {self.grid[1]}], got {tokens_Bhw.shape}")
    z = self._apply(params, VQNet.lookup, tokens_Bhw)
    return jnp.clip(self._apply(params, VQNet.decode_codes, z), -1.0, 1.0)
