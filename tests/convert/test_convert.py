"""Converters: synthetic state_dicts with the official key names and shapes (tiny VAR / LlamaGen) go
into exactly the arjax param trees, with the right layouts; missing / mis-shaped / unknown keys are
clear errors; files load with torch.load(weights_only=True) and round-trip through the orbax layout."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from arjax.convert import common, llamagen, synthetic, var
from arjax.paradigms.next_scale import NextScale
from arjax.paradigms.next_token import NextToken
from arjax.sampling import loop
from arjax.tokenizers.multiscale_vq import MultiScaleVQ

torch = pytest.importorskip("torch")  # the [torch] extra; converters read torch files

C, H, DEPTH, V, CV, NCLS, PN = 32, 2, 2, 16, 4, 3, (1, 2, 4)
VQ = dict(name="msvq", ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=CV, code_dim=CV, vocab_size=V,
          patch_nums=PN, image_size=8, attn=True, norm_groups=32)


def var_vae_keys():
  return synthetic.var_vae_keys(32, (1, 2), 1, CV, V, len(PN))


def var_keys():
  return synthetic.var_keys(C, H, DEPTH, V, CV, NCLS, PN)


random_sd = synthetic.random_state_dict


def var_model():
  tok = MultiScaleVQ(VQ)
  cfg = ml_collections.ConfigDict(dict(name="next_scale", num_classes=NCLS, width=C, label_drop=0.1,
                                       transformer=dict(depth=DEPTH, heads=H, mlp_ratio=4.0, impl="xla")))
  return tok, NextScale(cfg, tok, None)


def test_var_layouts_adaln_order_and_dropped_buffers():
  _, model = var_model()
  sd = common.to_numpy(random_sd(var_keys()))
  p = var.convert_var(sd, model)
  want = jax.tree.map(lambda x: x.shape, common.abstract_params(model, None))
  assert jax.tree.map(lambda x: x.shape, p) == want
  blk = p["transformer"]["block1"]
  qkv = sd["blocks.1.attn.mat_qkv.weight"]
  np.testing.assert_array_equal(blk["attn"]["k"]["kernel"][:, 1, 3], qkv[C + 16 + 3])  # head 1, dim 3 of k
  np.testing.assert_array_equal(blk["attn"]["o"]["kernel"][1, 3], sd["blocks.1.attn.proj.weight"][:, 16 + 3])
  np.testing.assert_array_equal(blk["attn"]["log_scale"], sd["blocks.1.attn.scale_mul_1H11"].ravel())
  assert "bias" not in blk["attn"]["k"]  # VAR has no k bias
  chunks = np.split(sd["blocks.1.ada_lin.1.bias"], 6)  # gamma1, gamma2, scale1, scale2, shift1, shift2
  ours = np.split(blk["adaln"]["proj"]["bias"], 6)  # shift1, scale1, gamma1, shift2, scale2, gamma2
  for o, t in zip(ours, (chunks[4], chunks[2], chunks[0], chunks[5], chunks[3], chunks[1])):
    np.testing.assert_array_equal(o, t)
  w = sd["head_nm.ada_lin.1.weight"]  # (scale, shift) -> arjax (shift, scale)
  np.testing.assert_array_equal(p["transformer"]["final_adaln"]["proj"]["kernel"][:, :C], w[C:].T)
  np.testing.assert_array_equal(p["transformer"]["pos_embed"], sd["pos_1LC"][0])


def test_var_vqvae_splits_fused_qkv_and_transposes_convs():
  tok, _ = var_model()
  sd = common.to_numpy(random_sd(var_vae_keys()))
  p = var.convert_vqvae(sd, tok)
  want = jax.tree.map(lambda x: x.shape, common.abstract_params(tok, dict(image=jnp.zeros((1, 8, 8, 3)))))
  assert jax.tree.map(lambda x: x.shape, p) == want
  qkv = sd["encoder.down.1.attn.0.qkv.weight"]
  np.testing.assert_array_equal(p["encoder"]["down_1_attn_0"]["v"]["kernel"][0, 0], qkv[128:, :, 0, 0].T)
  np.testing.assert_array_equal(p["decoder"]["up_1_upsample"]["kernel"][2, 0, 5, 7],
                                sd["decoder.up.1.upsample.conv.weight"][7, 5, 2, 0])
  np.testing.assert_array_equal(p["phi_2"]["bias"], sd["quantize.quant_resi.qresi_ls.2.bias"])
  # converted params run
  img = jax.jit(tok.decode)(p, tok.encode(p, jnp.zeros((1, 8, 8, 3))))
  assert img.shape == (1, 8, 8, 3)


def test_llamagen_gpt_and_vq():
  vq_cfg = dict(VQ, patch_nums=(4,), quant_resi=0.0, share_quant_resi=0, quant_conv_ks=1, l2_codes=True, z_channels=32)
  tok = MultiScaleVQ(vq_cfg)
  sd = common.to_numpy(random_sd(synthetic.llamagen_vq_keys(32, (1, 2), 1, 32, CV, V)))
  tp = llamagen.convert_vq(sd, tok)
  np.testing.assert_array_equal(tp["decoder"]["up_1_block_0"]["conv1"]["kernel"][1, 2, 3, 4],
                                sd["decoder.conv_blocks.0.res.0.conv1.weight"][4, 3, 1, 2])  # level 1 = block 0
  cfg = ml_collections.ConfigDict(dict(name="next_token", num_classes=NCLS, width=C, label_drop=0.1,
                                       rope_convention="llamagen",
                                       transformer=dict(depth=DEPTH, heads=H, kv_heads=1, mlp="swiglu", mlp_ratio=2.0,
                                                        norm="rms", pos="rope2d", impl="xla")))
  model = NextToken(cfg, tok, tp)
  hd = C // H
  gkeys = synthetic.llamagen_gpt_keys(C, H, 1, DEPTH, V, NCLS, 16, 2 * C)
  sd = common.to_numpy(random_sd(gkeys, 1))
  p = llamagen.convert_gpt(sd, model)
  np.testing.assert_array_equal(p["embed"]["embedding"], sd["tok_embeddings.weight"])
  np.testing.assert_array_equal(p["cond"]["class_embed"]["embedding"][2], sd["cls_embedding.embedding_table.weight"][2])
  np.testing.assert_array_equal(p["transformer"]["block0"]["attn"]["v"]["kernel"][:, 0, 5],
                                sd["layers.0.attention.wqkv.weight"][(H + 1) * hd + 5])
  np.testing.assert_array_equal(p["transformer"]["block1"]["mlp"]["up"]["kernel"], sd["layers.1.feed_forward.w3.weight"].T)
  opts = loop.options(dict(temperature=0.0))
  tokens = jax.jit(lambda p: model.sample_tokens(p, {"label": jnp.array([0, 1])}, jax.random.PRNGKey(0), opts))(p)
  assert tokens.shape == (2, 16)


def test_bad_state_dicts_name_the_key(tmp_path):
  _, model = var_model()
  sd = common.to_numpy(random_sd(var_keys()))
  with pytest.raises(common.ConversionError, match=r"blocks\.1\.ffn\.fc2\.bias.*missing"):
    var.convert_var({k: v for k, v in sd.items() if k != "blocks.1.ffn.fc2.bias"}, model)
  bad = dict(sd, **{"blocks.0.attn.mat_qkv.weight": np.zeros((3 * C, C + 1), np.float32)})
  with pytest.raises(common.ConversionError, match=r"blocks\.0\.attn\.mat_qkv\.weight.*\(96, 33\).*\(96, 32\)"):
    var.convert_var(bad, model)
  with pytest.raises(common.ConversionError, match=r"blocks\.2\.ffn\.fc1\.weight"):  # a deeper model's weights
    var.convert_var(dict(sd, **{"blocks.2.ffn.fc1.weight": sd["blocks.1.ffn.fc1.weight"]}), model)
  tok, _ = var_model()
  vsd = common.to_numpy(random_sd(var_vae_keys()))
  del vsd["decoder.mid.attn_1.proj_out.bias"]
  with pytest.raises(common.ConversionError, match=r"decoder/mid_attn_1/proj_out/bias"):
    var.convert_vqvae(vsd, tok)
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    common.load_state_dict(str(tmp_path / "nope.pth"))


def test_files_load_safely_and_checkpoints_round_trip(tmp_path):
  _, model = var_model()
  sd = random_sd(var_keys())
  torch.save({"model": sd, "ema": {k: v + 1 for k, v in sd.items()}}, tmp_path / "var.pth")
  got = common.load_state_dict(str(tmp_path / "var.pth"))  # 'auto' picks 'model'
  np.testing.assert_array_equal(got["head.bias"], sd["head.bias"].numpy())
  ema = common.load_state_dict(str(tmp_path / "var.pth"), select="ema")
  np.testing.assert_array_equal(ema["head.bias"], sd["head.bias"].numpy() + 1)
  with pytest.raises(common.ConversionError, match="'optimizer'"):
    common.load_state_dict(str(tmp_path / "var.pth"), select="optimizer")
  params = var.convert_var(got, model)
  common.save_params(params, str(tmp_path / "out"))
  from arjax.train import checkpoint
  back = checkpoint.load_params(str(tmp_path / "out" / "checkpoints"))
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_cli_convert_refuses_an_earlier_conversion_unless_overwrite(tmp_path):
  from arjax.convert.__main__ import convert
  from arjax.train import checkpoint
  (tmp_path / "tok.py").write_text(f"import ml_collections\n\n\ndef get_config(arg=None):\n"
                                   f"  return ml_collections.ConfigDict(dict(model={VQ!r}))\n")
  model_cfg = dict(name="next_scale", num_classes=NCLS, width=C, label_drop=0.1,
                   transformer=dict(depth=DEPTH, heads=H, mlp_ratio=4.0, impl="xla"))
  (tmp_path / "var.py").write_text(f"import ml_collections\n\n\ndef get_config(arg=None):\n"
                                   f"  return ml_collections.ConfigDict(dict(model={model_cfg!r}, tokenizer=dict("
                                   f"config={str(tmp_path / 'tok.py')!r})))\n")
  for seed in (0, 1):
    torch.save(random_sd(var_keys(), seed), tmp_path / f"var{seed}.pth")
  out, cfg = str(tmp_path / "out"), str(tmp_path / "var.py")
  convert("var", str(tmp_path / "var0.pth"), "", out, cfg)
  with pytest.raises(ValueError, match="already holds.*--overwrite"):
    convert("var", str(tmp_path / "var1.pth"), "", out, cfg)
  params = convert("var", str(tmp_path / "var1.pth"), "", out, cfg, overwrite=True)[0]
  jax.tree.map(np.testing.assert_array_equal, checkpoint.load_params(f"{out}/checkpoints"), params)
