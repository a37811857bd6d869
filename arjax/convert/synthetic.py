"""Random-weight state_dicts with the official key names and shapes of (tiny) VAR / LlamaGen models, for the
converter tests and notebooks/04 when the released files are not at hand:

  keys = var_keys(width=32, heads=2, depth=2, vocab=16, code_dim=4, num_classes=3, patch_nums=(1, 2, 4))
  torch.save(random_state_dict(keys, seed=0), "var.pth")   # then: python -m arjax.convert --from var ...
Each *_keys function returns name -> shape in the official PyTorch naming; random_state_dict needs torch.
"""
from __future__ import annotations


def ldm_keys(ch, ch_mult, nrb, z, fused_qkv, llamagen_names) -> dict:
  """name -> shape of an LDM/taming encoder+decoder in the official naming."""
  out = {}
  def conv(n, o, i, k):
    out[n + ".weight"], out[n + ".bias"] = (o, i, k, k), (o,)
  def norm(n, c):
    out[n + ".weight"], out[n + ".bias"] = (c,), (c,)
  def res(n, i, o):
    norm(n + ".norm1", i), conv(n + ".conv1", o, i, 3), norm(n + ".norm2", o), conv(n + ".conv2", o, o, 3)
    if i != o:
      conv(n + ".nin_shortcut", o, i, 1)
  def attn(n, c):
    norm(n + ".norm", c)
    if fused_qkv:
      conv(n + ".qkv", 3 * c, c, 1)
    else:
      [conv(f"{n}.{x}", c, c, 1) for x in "qkv"]
    conv(n + ".proj_out", c, c, 1)
  levels = len(ch_mult)
  down = ("conv_blocks", "res") if llamagen_names else ("down", "block")
  up = ("conv_blocks", "res") if llamagen_names else ("up", "block")
  conv("encoder.conv_in", ch, 3, 3)
  cin = ch
  for i, m in enumerate(ch_mult):
    for j in range(nrb):
      res(f"encoder.{down[0]}.{i}.{down[1]}.{j}", cin, ch * m)
      cin = ch * m
      if i == levels - 1:
        attn(f"encoder.{down[0]}.{i}.attn.{j}", cin)
    if i != levels - 1:
      conv(f"encoder.{down[0]}.{i}.downsample.conv", cin, cin, 3)
  for part in ("encoder", "decoder"):
    names = ("mid.0", "mid.1", "mid.2") if llamagen_names else ("mid.block_1", "mid.attn_1", "mid.block_2")
    c = ch * ch_mult[-1]
    res(f"{part}.{names[0]}", c, c), attn(f"{part}.{names[1]}", c), res(f"{part}.{names[2]}", c, c)
  norm("encoder.norm_out", cin), conv("encoder.conv_out", z, cin, 3)
  conv("decoder.conv_in", ch * ch_mult[-1], z, 3)
  cin = ch * ch_mult[-1]
  for i in reversed(range(levels)):
    idx = levels - 1 - i if llamagen_names else i
    for j in range(nrb + 1):
      res(f"decoder.{up[0]}.{idx}.{up[1]}.{j}", cin, ch * ch_mult[i])
      cin = ch * ch_mult[i]
      if i == levels - 1:
        attn(f"decoder.{up[0]}.{idx}.attn.{j}", cin)
    if i != 0:
      conv(f"decoder.{up[0]}.{idx}.upsample.conv", cin, cin, 3)
  norm("decoder.norm_out", cin), conv("decoder.conv_out", 3, cin, 3)
  return out


def var_vae_keys(ch, ch_mult, nrb, code_dim, vocab, num_scales) -> dict:
  """VAR's VQVAE (z_channels = code_dim, fused qkv, 4 shared phi convs)."""
  cv = code_dim
  keys = ldm_keys(ch, ch_mult, nrb, cv, True, False)
  keys.update({"quant_conv.weight": (cv, cv, 3, 3), "quant_conv.bias": (cv,), "post_quant_conv.weight": (cv, cv, 3, 3),
               "post_quant_conv.bias": (cv,), "quantize.embedding.weight": (vocab, cv),
               "quantize.ema_vocab_hit_SV": (num_scales, vocab)})
  for k in range(4):
    phi = f"quantize.quant_resi.qresi_ls.{k}"
    keys[phi + ".weight"], keys[phi + ".bias"] = (cv, cv, 3, 3), (cv,)
  return keys


def var_keys(width, heads, depth, vocab, code_dim, num_classes, patch_nums) -> dict:
  """VAR's transformer (AdaLN blocks, MLP x4, class table with the null class)."""
  c, n = width, sum(p * p for p in patch_nums)
  keys = {"class_emb.weight": (num_classes + 1, c), "pos_start": (1, 1, c), "pos_1LC": (1, n, c),
          "lvl_embed.weight": (len(patch_nums), c), "word_embed.weight": (c, code_dim), "word_embed.bias": (c,),
          "lvl_1L": (1, n), "attn_bias_for_masking": (1, 1, n, n), "head_nm.ada_lin.1.weight": (2 * c, c),
          "head_nm.ada_lin.1.bias": (2 * c,), "head.weight": (vocab, c), "head.bias": (vocab,)}
  for i in range(depth):
    b = f"blocks.{i}."
    keys.update({b + "attn.mat_qkv.weight": (3 * c, c), b + "attn.q_bias": (c,), b + "attn.v_bias": (c,),
                 b + "attn.zero_k_bias": (c,), b + "attn.scale_mul_1H11": (1, heads, 1, 1),
                 b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,), b + "ffn.fc1.weight": (4 * c, c),
                 b + "ffn.fc1.bias": (4 * c,), b + "ffn.fc2.weight": (c, 4 * c), b + "ffn.fc2.bias": (c,),
                 b + "ada_lin.1.weight": (6 * c, c), b + "ada_lin.1.bias": (6 * c,)})
  return keys


def llamagen_vq_keys(ch, ch_mult, nrb, z, code_dim, vocab) -> dict:
  """LlamaGen's VQ (separate q/k/v, 1x1 quant convs z -> code_dim, codebook_used buffer)."""
  keys = ldm_keys(ch, ch_mult, nrb, z, False, True)
  keys.update({"quant_conv.weight": (code_dim, z, 1, 1), "quant_conv.bias": (code_dim,),
               "post_quant_conv.weight": (z, code_dim, 1, 1), "post_quant_conv.bias": (z,),
               "quantize.embedding.weight": (vocab, code_dim), "quantize.codebook_used": (65536,)})
  return keys


def llamagen_gpt_keys(width, heads, kv_heads, depth, vocab, num_classes, num_tokens, hidden) -> dict:
  """LlamaGen's c2i GPT (fused wqkv, SwiGLU w1/w3/w2, RMSNorm, one class token, freqs_cis buffer)."""
  c, hd = width, width // heads
  keys = {"tok_embeddings.weight": (vocab, c), "cls_embedding.embedding_table.weight": (num_classes + 1, c),
          "norm.weight": (c,), "output.weight": (vocab, c), "freqs_cis": (num_tokens + 1, hd // 2, 2)}
  for i in range(depth):
    b = f"layers.{i}."
    keys.update({b + "attention.wqkv.weight": ((heads + 2 * kv_heads) * hd, c), b + "attention.wo.weight": (c, c),
                 b + "feed_forward.w1.weight": (hidden, c), b + "feed_forward.w3.weight": (hidden, c),
                 b + "feed_forward.w2.weight": (c, hidden), b + "attention_norm.weight": (c,),
                 b + "ffn_norm.weight": (c,)})
  return keys


def random_state_dict(keys: dict, seed: int = 0) -> dict:
  """name -> torch.randn(shape) (reproducible from `seed`) for name -> shape `keys`."""
  import torch
  g = torch.Generator().manual_seed(seed)
  return {k: torch.randn(*s, generator=g) for k, s in keys.items()}
