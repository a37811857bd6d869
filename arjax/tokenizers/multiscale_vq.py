"""VAR's multi-scale residual VQ tokenizer (one shared codebook, K token maps from 1x1 to hxw).

Per scale k (small to large): area-downsample the residual to pn_k x pn_k, take the nearest code,
bicubic-upsample it back to h x w, refine it with a phi conv blended with ratio r
(phi(z) = (1 - r) z + r conv(z)) and subtract it from the residual; f_hat is the running sum.
phi convs are partially shared: K_phi convs at ticks in [0, 1], scale k uses the one nearest k/(K-1).
The conv encoder/decoder is arjax.nn.conv's stack in its LDM/taming layout (GroupNorm, ResBlocks,
attention at the lowest resolution), computed exactly (HIGHEST precision, two-pass GroupNorm variance) as
the converted weights expect. With one scale, no phi (quant_resi=0) and l2 codes it is LlamaGen's VQ, and
then it speaks the plain VQ interface (tokens [B, h, w]); with several scales tokens are a list of [B, pn, pn].
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arjax import config as config_lib
from arjax.eval.metrics import psnr
from arjax.nn import conv as conv_lib
from arjax.nn.layers import l2_normalize
from arjax.nn.resize import resize

HIGHEST = jax.lax.Precision.HIGHEST
CFG_KEYS = ("name", "ch", "ch_mult", "num_res_blocks", "z_channels", "code_dim", "vocab_size", "patch_nums",
            "quant_resi", "share_quant_resi", "quant_conv_ks", "l2_codes", "beta", "attn", "mid_attn",
            "norm_groups", "image_size")


def phi_index(si: int, num_scales: int, num_phi: int) -> int:
  """Which of the num_phi partially shared phi convs scale si uses (nearest tick to si/(K-1))."""
  k = num_phi
  ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
  return int(np.argmin(np.abs(ticks - si / max(num_scales - 1, 1))))


class MultiScaleVQNet(nn.Module):
  """Encoder, quant convs, codebook, phi convs and decoder; methods are the tokenizer's pieces."""
  cfg: dict

  def setup(self):
    c = self.cfg
    ks = c["quant_conv_ks"]
    stack = conv_lib.ConvConfig(c["ch"], c["ch_mult"], c["num_res_blocks"], groups=c["norm_groups"],
                                attn=c["attn"], mid_attn=c["mid_attn"], exact=True)
    self.encoder = conv_lib.Encoder(stack, c["z_channels"])
    self.decoder = conv_lib.Decoder(stack)
    self.quant_conv = conv_lib.conv(c["code_dim"], ks, exact=True)
    self.post_quant_conv = conv_lib.conv(c["z_channels"], ks, exact=True)
    v = c["vocab_size"]
    init = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -1.0 / v, 1.0 / v)
    self.embedding = self.param("embedding", init, (v, c["code_dim"]))
    num_phi = c["share_quant_resi"] if c["quant_resi"] else 0
    self.phi = [conv_lib.conv(c["code_dim"], 3, exact=True) for _ in range(num_phi)]

  def __call__(self, x):
    """Touches every parameter (used by init)."""
    f = self.features(x) + 0 * self.codebook()[0]
    for conv in self.phi:
      f = conv(f)
    return self.to_image(f)

  def features(self, x):
    """Images -> pre-quantisation features f [B, h, w, C] (unit-norm per position with l2 codes)."""
    f = self.quant_conv(self.encoder(x))
    return l2_normalize(f) if self.cfg["l2_codes"] else f

  def codebook(self):
    return l2_normalize(self.embedding) if self.cfg["l2_codes"] else self.embedding

  def refine(self, h_BhwC, si: int):
    """phi_k(h) = (1 - r) h + r conv_k(h) for the conv scale si uses (identity without phi)."""
    if not self.phi:
      return h_BhwC
    r = abs(self.cfg["quant_resi"])
    conv = self.phi[phi_index(si, len(self.cfg["patch_nums"]), len(self.phi))]
    return (1 - r) * h_BhwC + r * conv(h_BhwC)

  def to_image(self, f_hat):
    return self.decoder(self.post_quant_conv(f_hat))


def nearest(z_NC, codes_VC):
  """Index of the nearest code (squared L2; equals max cosine for unit vectors)."""
  d = jnp.sum(jnp.square(codes_VC), -1) - 2 * jnp.einsum("nc,vc->nv", z_NC, codes_VC, precision=HIGHEST)
  return jnp.argmin(d, axis=-1).astype(jnp.int32)


class MultiScaleVQ:
  """Multi-scale residual VQ tokenizer as a Trainable: init, loss, maintain, encode, decode."""
  kind = "discrete"

  def __init__(self, cfg):
    config_lib.check_keys(cfg, CFG_KEYS, "model")
    self.cfg = dict(name="msvq", ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=32, code_dim=32,
                    vocab_size=4096, patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), quant_resi=0.5,
                    share_quant_resi=4, quant_conv_ks=3, l2_codes=False, beta=0.25, attn=True, mid_attn=True,
                    norm_groups=32, image_size=256)
    items = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    self.cfg.update({k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in items.items()})
    self.patch_nums = tuple(int(p) for p in self.cfg["patch_nums"])
    self.vocab_size = int(self.cfg["vocab_size"])
    self.code_dim = int(self.cfg["code_dim"])
    down = 2 ** (len(self.cfg["ch_mult"]) - 1)
    if self.cfg["image_size"] // down != self.patch_nums[-1]:
      raise ValueError(f"patch_nums[-1]={self.patch_nums[-1]} must equal the latent size image_size/"
                       f"{down}={self.cfg['image_size'] // down}")
    if list(self.patch_nums) != sorted(set(self.patch_nums)):
      raise ValueError(f"patch_nums must increase strictly, got {self.patch_nums}")
    self.grid = (self.patch_nums[-1],) * 2
    self.scale_sizes = tuple(p * p for p in self.patch_nums)
    self.net = MultiScaleVQNet(self.cfg)

  def _apply(self, params, method, *args):
    return self.net.apply({"params": params}, *args, method=method)

  def init(self, rng, batch):
    return self.net.init(rng, batch["image"][:1])["params"]

  # ---- quantisation

  def _quantize(self, params, f):
    """(token maps, f_hat after each scale, the downsampled residuals that were quantised)."""
    codes = self._apply(params, MultiScaleVQNet.codebook)
    f_rest, f_hat = f, jnp.zeros_like(f)
    tokens, f_hats, residuals = [], [], []
    n = len(self.patch_nums)
    for si, pn in enumerate(self.patch_nums):
      z = resize(f_rest, pn, "area") if si != n - 1 else f_rest
      idx = nearest(z.reshape(-1, z.shape[-1]), jax.lax.stop_gradient(codes)).reshape(z.shape[:3])
      h = jnp.take(codes, idx, axis=0)
      h = resize(h, self.grid[0], "bicubic") if si != n - 1 else h
      h = self._apply(params, MultiScaleVQNet.refine, h, si)
      f_hat, f_rest = f_hat + h, f_rest - h
      tokens.append(idx)
      f_hats.append(f_hat)
      residuals.append(z.reshape(-1, z.shape[-1]))
    return tokens, f_hats, residuals

  def encode_scales(self, params, images_BHW3):
    """Images -> list of token maps int32 [B, pn, pn], small to large."""
    f = self._apply(params, MultiScaleVQNet.features, images_BHW3)
    return self._quantize(params, f)[0]

  def encode(self, params, images_BHW3):
    """Token maps (a list; a single [B, h, w] array when there is one scale)."""
    tokens = self.encode_scales(params, images_BHW3)
    return tokens[0] if len(tokens) == 1 else tokens

  def embed(self, params, idx):
    """Code vectors for token ids (any shape) -> [..., C]."""
    return jnp.take(self._apply(params, MultiScaleVQNet.codebook), idx, axis=0)

  def next_input(self, params, si: int, f_hat, h_BpnpnC):
    """Adds scale si's code map to f_hat; returns (f_hat, f_hat area-downsampled to the next scale)."""
    last = si == len(self.patch_nums) - 1
    h = h_BpnpnC if last else resize(h_BpnpnC, self.grid[0], "bicubic")
    f_hat = f_hat + self._apply(params, MultiScaleVQNet.refine, h, si)
    return f_hat, (f_hat if last else resize(f_hat, self.patch_nums[si + 1], "area"))

  def teacher_inputs(self, params, tokens):
    """Teacher-forcing inputs [B, L - pn_0^2, C]: cumulative f_hat downsampled to each next scale."""
    b = tokens[0].shape[0]
    f_hat = jnp.zeros((b, *self.grid, self.code_dim), jnp.float32)
    out = []
    for si in range(len(self.patch_nums) - 1):
      f_hat, nxt = self.next_input(params, si, f_hat, self.embed(params, tokens[si]))
      out.append(nxt.reshape(b, -1, self.code_dim))
    return jnp.concatenate(out, axis=1) if out else jnp.zeros((b, 0, self.code_dim))

  def tokens_to_fhat(self, params, tokens):
    """f_hat from the first len(tokens) scales (all upsampled to the final grid)."""
    tokens = [tokens] if not isinstance(tokens, (list, tuple)) else tokens
    f_hat = jnp.zeros((tokens[0].shape[0], *self.grid, self.code_dim), jnp.float32)
    for si, t in enumerate(tokens):
      f_hat = self.next_input(params, si, f_hat, self.embed(params, t))[0]
    return f_hat

  def fhat_to_image(self, params, f_hat):
    """Latent f_hat [B, h, w, C] -> images [B, H, W, 3] clipped to [-1, 1]."""
    return jnp.clip(self._apply(params, MultiScaleVQNet.to_image, f_hat), -1, 1)

  def decode(self, params, tokens):
    """Token maps (list, or one [B, h, w] array) -> images; a prefix of the scales gives a coarser image."""
    return self.fhat_to_image(params, self.tokens_to_fhat(params, tokens))

  # ---- training

  def loss(self, params, batch, rng, train=True):
    """Reconstruction MSE + VAR's VQ loss (beta * commitment + codebook), straight-through f_hat."""
    x = batch["image"]
    f = self._apply(params, MultiScaleVQNet.features, x)
    f_ng = jax.lax.stop_gradient(f)
    _, f_hats, _ = self._quantize(params, f_ng)
    mse = lambda a, b: jnp.mean(jnp.square(a - b))
    vq = sum(self.cfg["beta"] * mse(jax.lax.stop_gradient(fh), f) + mse(fh, f_ng) for fh in f_hats) / len(f_hats)
    f_st = f + jax.lax.stop_gradient(f_hats[-1] - f)
    rec = self._apply(params, MultiScaleVQNet.to_image, f_st)
    rec_mse = mse(rec, x)
    return rec_mse + vq, dict(rec_mse=rec_mse, vq_loss=vq, psnr=psnr(rec, x), usage=self._usage(params, f_ng))

  def _usage(self, params, f):
    hits = self._hits(params, f)[0]
    return jnp.mean((hits > 0).astype(jnp.float32))

  def _hits(self, params, f):
    tokens, _, residuals = self._quantize(params, f)
    idx = jnp.concatenate([t.reshape(-1) for t in tokens])
    return jnp.zeros((self.vocab_size,), jnp.int32).at[idx].add(1), jnp.concatenate(residuals)

  def maintain(self, params, batch, rng):
    """Codebook upkeep: codes no scale of the batch used restart at randomly drawn residual vectors."""
    f = self._apply(params, MultiScaleVQNet.features, batch["image"])
    hits, residuals = self._hits(params, f)
    pick = jax.random.randint(rng, (self.vocab_size,), 0, residuals.shape[0])
    emb = jnp.where((hits == 0)[:, None], residuals[pick], params["embedding"])
    return {**params, "embedding": emb}
