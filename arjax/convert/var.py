"""VAR (FoundationVision) checkpoints: var_d{N}.pth -> NextScale params, vae_ch160v4096z32.pth ->
MultiScaleVQ params.

VAR layout -> arjax: mat_qkv [3C, C] is split into q/k/v kernels [C, H, hd]; q_bias, v_bias go to the
q/v biases (the zero_k_bias buffer is dropped); scale_mul_1H11 -> log_scale [H]; ada_lin chunks
(gamma1, gamma2, scale1, scale2, shift1, shift2) are reordered to arjax's (shift1, scale1, gamma1,
shift2, scale2, gamma2); head_nm (scale, shift) -> final_adaln (shift, scale); pos_1LC -> the
transformer's learned positions. Persistent buffers (lvl_1L, attn_bias_for_masking, zero_k_bias,
ema_vocab_hit_SV) are dropped.
"""
from __future__ import annotations

import numpy as np

from arjax.convert import common

BUFFERS = ("lvl_1L", "attn_bias_for_masking", "zero_k_bias", "ema_vocab_hit_SV")
ADALN_ORDER = (4, 2, 0, 5, 3, 1)  # arjax chunk i takes VAR chunk ADALN_ORDER[i]
FINAL_ORDER = (1, 0)


def _chunks(w, order, axis):
  parts = np.split(w, len(order), axis=axis)
  return np.concatenate([parts[i] for i in order], axis=axis)


def convert_var(sd: dict, model) -> dict:
  """VAR transformer state_dict -> params of arjax NextScale `model` (shapes checked against it)."""
  src = "VAR state_dict"
  sd = {k: v for k, v in sd.items() if not k.rsplit(".", 1)[-1] in BUFFERS}
  t = model.tcfg
  c, h = model.cfg.width, t.heads
  hd = t.head_dim
  depth = t.depth
  flat = {}
  take = lambda key, shape: common.expect_shape(sd, key, shape, src)
  put = lambda path, key, v: flat.__setitem__(path, (key, v))
  v_codes, n_cls, first = model.tokenizer.vocab_size, model.num_classes + 1, model.sizes[0]
  cvae = model.tokenizer.code_dim
  put("cond/class_embed/embedding", "class_emb.weight", take("class_emb.weight", (n_cls, c)))
  put("pos_start", "pos_start", take("pos_start", (1, first, c))[0])
  put("transformer/pos_embed", "pos_1LC", take("pos_1LC", (1, model.num_tokens, c))[0])
  put("lvl_embed", "lvl_embed.weight", take("lvl_embed.weight", (len(model.sizes), c)))
  put("word_embed/kernel", "word_embed.weight", common.linear(take("word_embed.weight", (c, cvae))))
  put("word_embed/bias", "word_embed.bias", take("word_embed.bias", (c,)))
  hidden = round(c * t.mlp_ratio)
  for i in range(depth):
    b, o = f"blocks.{i}.", f"transformer/block{i}/"
    qkv = take(b + "attn.mat_qkv.weight", (3 * c, c))
    for name, w in zip("qkv", np.split(qkv, 3, axis=0)):
      put(o + f"attn/{name}/kernel", b + "attn.mat_qkv.weight", common.linear(w).reshape(c, h, hd))
    put(o + "attn/q/bias", b + "attn.q_bias", take(b + "attn.q_bias", (c,)).reshape(h, hd))
    put(o + "attn/v/bias", b + "attn.v_bias", take(b + "attn.v_bias", (c,)).reshape(h, hd))
    put(o + "attn/log_scale", b + "attn.scale_mul_1H11", take(b + "attn.scale_mul_1H11", (1, h, 1, 1)).reshape(h))
    put(o + "attn/o/kernel", b + "attn.proj.weight", common.linear(take(b + "attn.proj.weight", (c, c))).reshape(h, hd, c))
    put(o + "attn/o/bias", b + "attn.proj.bias", take(b + "attn.proj.bias", (c,)))
    for ours, theirs, shape in (("up", "fc1", (hidden, c)), ("down", "fc2", (c, hidden))):
      put(o + f"mlp/{ours}/kernel", b + f"ffn.{theirs}.weight", common.linear(take(b + f"ffn.{theirs}.weight", shape)))
      put(o + f"mlp/{ours}/bias", b + f"ffn.{theirs}.bias", take(b + f"ffn.{theirs}.bias", shape[:1]))
    w = take(b + "ada_lin.1.weight", (6 * c, c))
    put(o + "adaln/proj/kernel", b + "ada_lin.1.weight", _chunks(common.linear(w), ADALN_ORDER, 1))
    put(o + "adaln/proj/bias", b + "ada_lin.1.bias", _chunks(take(b + "ada_lin.1.bias", (6 * c,)), ADALN_ORDER, 0))
  w = take("head_nm.ada_lin.1.weight", (2 * c, c))
  put("transformer/final_adaln/proj/kernel", "head_nm.ada_lin.1.weight", _chunks(common.linear(w), FINAL_ORDER, 1))
  put("transformer/final_adaln/proj/bias", "head_nm.ada_lin.1.bias",
      _chunks(take("head_nm.ada_lin.1.bias", (2 * c,)), FINAL_ORDER, 0))
  put("head/kernel", "head.weight", common.linear(take("head.weight", (v_codes, c))))
  put("head/bias", "head.bias", take("head.bias", (v_codes,)))
  used = {k for k, _ in flat.values()}
  extra = sorted(set(sd) - used)
  if extra:
    raise common.ConversionError(f"{src}: unexpected key(s) {extra[:8]} (shared AdaLN or a different "
                                 f"architecture is not supported)")
  expected = common.abstract_params(model, None)
  return common.check_and_build(flat, expected, src)


def convert_vqvae(sd: dict, tokenizer) -> dict:
  """VAR's VQVAE state_dict -> arjax MultiScaleVQ params."""
  import jax.numpy as jnp
  size = tokenizer.cfg["image_size"]
  expected = common.abstract_params(tokenizer, dict(image=jnp.zeros((1, size, size, 3))))
  return common.convert_ldm_vq(sd, expected, "VAR VQVAE state_dict", lambda k: k, drop=BUFFERS)
