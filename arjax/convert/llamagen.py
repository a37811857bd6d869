"""LlamaGen checkpoints: c2i_{B,L,...}_256.pt -> NextToken params (rope_convention='llamagen'),
vq_ds16_c2i.pt -> a one-scale MultiScaleVQ (l2 codes, no phi) params.

GPT: wqkv [(H + 2 Hkv) hd, C] is split into q/k/v kernels; tok_embeddings (V rows) and the class
table (C+1 rows) become arjax's token table and the Conditioner's class table; w1/w3/w2
-> SwiGLU gate/up/down; the bias-free output layer gets a zero bias. freqs_cis / KV-cache buffers
are dropped. VQ: conv_blocks.{i}.res.{j} / .attn.{j} / mid.{0,1,2} are renamed to the LDM layout
(decoder conv_blocks are in reverse level order); codebook_used is dropped.
"""
from __future__ import annotations

import re

import numpy as np

from arjax.convert import common

BUFFERS = ("freqs_cis", "k_cache", "v_cache", "causal_mask", "codebook_used")


def convert_gpt(sd: dict, model) -> dict:
  """LlamaGen c2i GPT state_dict -> params of arjax NextToken `model`."""
  src = "LlamaGen GPT state_dict"
  sd = {k: v for k, v in sd.items() if k.rsplit(".", 1)[-1] not in BUFFERS}
  t = model.tcfg
  c, h = model.cfg.width, t.heads
  g, hd = t.num_kv_heads, t.head_dim
  v_codes, n_cls = model.tokenizer.vocab_size, model.num_classes + 1
  take = lambda key, shape: common.expect_shape(sd, key, shape, src)
  flat = {}
  put = lambda path, key, v: flat.__setitem__(path, (key, v))
  tok = take("tok_embeddings.weight", (v_codes, c))
  cls = take("cls_embedding.embedding_table.weight", (n_cls, c))
  put("embed/embedding", "tok_embeddings.weight", tok)
  put("cond/class_embed/embedding", "cls_embedding.embedding_table.weight", cls)
  hidden = int(c * t.mlp_ratio)
  for i in range(t.depth):
    b, o = f"layers.{i}.", f"transformer/block{i}/"
    wqkv = take(b + "attention.wqkv.weight", ((h + 2 * g) * hd, c))
    q, k, v = np.split(wqkv, [h * hd, (h + g) * hd], axis=0)
    for name, w, n in (("q", q, h), ("k", k, g), ("v", v, g)):
      put(o + f"attn/{name}/kernel", b + "attention.wqkv.weight", common.linear(w).reshape(c, n, hd))
    put(o + "attn/o/kernel", b + "attention.wo.weight", common.linear(take(b + "attention.wo.weight", (c, c))).reshape(h, hd, c))
    for ours, theirs, shape in (("gate", "w1", (hidden, c)), ("up", "w3", (hidden, c)), ("down", "w2", (c, hidden))):
      put(o + f"mlp/{ours}/kernel", b + f"feed_forward.{theirs}.weight",
          common.linear(take(b + f"feed_forward.{theirs}.weight", shape)))
    put(o + "norm1/scale", b + "attention_norm.weight", take(b + "attention_norm.weight", (c,)))
    put(o + "norm2/scale", b + "ffn_norm.weight", take(b + "ffn_norm.weight", (c,)))
  put("transformer/final_norm/scale", "norm.weight", take("norm.weight", (c,)))
  put("head/kernel", "output.weight", common.linear(take("output.weight", (v_codes, c))))
  put("head/bias", "output.weight (none: zeros)", np.zeros((v_codes,), np.float32))
  used = {n for key, _ in flat.values() for n in key.split(" + ")}
  extra = sorted(set(sd) - used)
  if extra:
    raise common.ConversionError(f"{src}: unexpected key(s) {extra[:8]} (only class-conditional GPTs are supported)")
  return common.check_and_build(flat, common.abstract_params(model, None), src)


def _vq_rename(n_levels: int):
  def rename(key):
    key = re.sub(r"^encoder\.conv_blocks\.(\d+)\.res\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"^encoder\.conv_blocks\.(\d+)\.", r"encoder.down.\1.", key)
    key = re.sub(r"^decoder\.conv_blocks\.(\d+)\.(res|attn|upsample)",
                 lambda m: f"decoder.up.{n_levels - 1 - int(m.group(1))}."
                           f"{'block' if m.group(2) == 'res' else m.group(2)}", key)
    return re.sub(r"^(encoder|decoder)\.mid\.(\d)\.",
                  lambda m: f"{m.group(1)}.mid.{('block_1', 'attn_1', 'block_2')[int(m.group(2))]}.", key)
  return rename


def convert_vq(sd: dict, tokenizer) -> dict:
  """LlamaGen VQModel state_dict -> params of a one-scale arjax MultiScaleVQ (l2 codes, no phi)."""
  import jax.numpy as jnp
  size = tokenizer.cfg["image_size"]
  expected = common.abstract_params(tokenizer, dict(image=jnp.zeros((1, size, size, 3))))
  return common.convert_ldm_vq(sd, expected, "LlamaGen VQ state_dict", _vq_rename(len(tokenizer.cfg["ch_mult"])),
                               drop=BUFFERS)
