"""The one conv encoder/decoder stack equals an explicit lax reference that states every width, in both of its
layouts (the compact VQ / VAE one and the LDM one of the multi-scale VQ), and uses every parameter."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from arjax.nn import conv as conv_lib
from arjax.nn import cpu_int8, quant
from arjax.tokenizers.vae import VAETokenizer
from arjax.tokenizers.vq import VQTokenizer

HIGHEST = jax.lax.Precision.HIGHEST


class Reference:
  """The expected forward pass over a flat 'a/b/kernel' param dict; every read parameter is crossed off."""

  def __init__(self, params, groups, bf16_convs=False, int8_min_channels=None):
    self.p, self.groups = dict(traverse_util.flatten_dict(params, sep="/")), groups
    # bf16 convs: operands rounded to bf16, products and sums exact (f32 HIGHEST)
    self.operand = (lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)) if bf16_convs else (lambda a: a)
    # int8 3x3 convs (C a multiple of 4, >= int8_min_channels in and out): pixels quantised over their channels,
    # the kernel per output channel, the products and sums of those values exact
    self.int8_min_channels = int8_min_channels

  def take(self, name, shape):
    w = self.p.pop(name)
    assert w.shape == shape, (name, w.shape, shape)
    return w

  def conv(self, name, x, out, k=3, stride=1, pad=None):
    w = self.take(f"{name}/kernel", (k, k, x.shape[-1], out))
    pad = ((k // 2, k // 2),) * 2 if pad is None else pad
    c = x.shape[-1]
    if self.int8_min_channels and k == 3 and stride == 1 and c % 4 == 0 and min(c, out) >= self.int8_min_channels:
      x, w = quant.symmetric(x, [3]).values(), quant.quantize_kernel(w).values()
    y = jax.lax.conv_general_dilated(self.operand(x), self.operand(w), (stride, stride), pad,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST)
    return y + self.take(f"{name}/bias", (out,))

  def norm(self, name, x):
    b, h, w, c = x.shape
    x_g = x.reshape(b, h, w, self.groups, c // self.groups)
    x_g = (x_g - x_g.mean((1, 2, 4), keepdims=True)) / jnp.sqrt(x_g.var((1, 2, 4), keepdims=True) + 1e-6)
    return x_g.reshape(x.shape) * self.take(f"{name}/scale", (c,)) + self.take(f"{name}/bias", (c,))

  def res(self, name, x, out):
    h = self.conv(f"{name}/conv1", jax.nn.silu(self.norm(f"{name}/norm1", x)), out)
    h = self.conv(f"{name}/conv2", jax.nn.silu(self.norm(f"{name}/norm2", h)), out)
    return (x if x.shape[-1] == out else self.conv(f"{name}/nin_shortcut", x, out, 1)) + h

  def attn(self, name, x):
    b, hh, ww, c = x.shape
    h = self.norm(f"{name}/norm", x)
    q, k, v = (self.conv(f"{name}/{n}", h, c, 1).reshape(b, hh * ww, c) for n in "qkv")
    w = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k, precision=HIGHEST) / np.sqrt(c), axis=-1)
    h = jnp.einsum("bij,bjc->bic", w, v, precision=HIGHEST).reshape(x.shape)
    return x + self.conv(f"{name}/proj_out", h, c, 1)

  def mid(self, h, cfg):
    h = self.res("mid_block_1", h, h.shape[-1])
    h = self.attn("mid_attn_1", h) if cfg.mid_attn else h
    return self.res("mid_block_2", h, h.shape[-1]) if cfg.mid_blocks == 2 else h

  def encoder(self, x, cfg, out):
    last = len(cfg.ch_mult) - 1
    h = self.conv("conv_in", x, cfg.ch)
    for i, m in enumerate(cfg.ch_mult):
      for j in range(cfg.num_res_blocks):
        h = self.res(f"down_{i}_block_{j}", h, cfg.ch * m)
        h = self.attn(f"down_{i}_attn_{j}", h) if cfg.attn and i == last else h
      if i != last:
        h = self.conv(f"down_{i}_downsample", h, cfg.ch * m, stride=2, pad=((0, 1), (0, 1)))
    h = self.mid(h, cfg)
    return self.conv("conv_out", jax.nn.silu(self.norm("norm_out", h)), out)

  def decoder(self, z, cfg, blocks_per_level, upsample_width):
    last = len(cfg.ch_mult) - 1
    h = self.mid(self.conv("conv_in", z, cfg.ch * cfg.ch_mult[-1]), cfg)
    for i in reversed(range(last + 1)):
      for j in range(blocks_per_level):
        h = self.res(f"up_{i}_block_{j}", h, cfg.ch * cfg.ch_mult[i])
        h = self.attn(f"up_{i}_attn_{j}", h) if cfg.attn and i == last else h
      if i != 0:
        h = self.conv(f"up_{i}_upsample", jnp.repeat(jnp.repeat(h, 2, 1), 2, 2), upsample_width(i, h.shape[-1]))
    return self.conv("conv_out", jax.nn.silu(self.norm("norm_out", h)), 3)


# compact: what the VQ / VAE tokenizers had before the stacks were merged (num_res_blocks decoder blocks per level,
# upsampling straight to the next level's width, one mid block, no attention); ldm: VAR / LlamaGen's
LAYOUTS = {
    "compact": (conv_lib.ConvConfig.compact(8, (2, 1, 4), 2, 4), 2, lambda i, c: 8 * (2, 1, 4)[i - 1]),
    "ldm": (conv_lib.ConvConfig(8, (1, 2, 2), 1, groups=4, exact=True), 2, lambda i, c: c),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_stack_equals_explicit_reference(layout):
  cfg, blocks_per_level, upsample_width = LAYOUTS[layout]
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  enc, dec = conv_lib.Encoder(cfg, 5), conv_lib.Decoder(cfg)
  params = enc.init(jax.random.PRNGKey(1), x)["params"]
  ref = Reference(params, cfg.groups)
  np.testing.assert_allclose(enc.apply({"params": params}, x), ref.encoder(x, cfg, 5), atol=1e-4, rtol=1e-4)
  assert not ref.p, sorted(ref.p)
  z = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 4, 5))
  params = dec.init(jax.random.PRNGKey(3), z)["params"]
  ref = Reference(params, cfg.groups)
  np.testing.assert_allclose(dec.apply({"params": params}, z), ref.decoder(z, cfg, blocks_per_level, upsample_width),
                             atol=1e-4, rtol=1e-4)
  assert not ref.p, sorted(ref.p)


@pytest.mark.parametrize("b,h,w,c,d,chunk", [(2, 12, 5, 3, 4, 40), (1, 7, 9, 6, 2, 20), (3, 8, 8, 4, 4, 10 ** 6)])
def test_conv3x3_rows_equals_lax_conv(monkeypatch, b, h, w, c, d, chunk):
  """Row-chunked bf16 products (several chunks: 12 rows in 3 chunks, a prime height in 7, one chunk) equal the
  lax conv of the bf16-rounded operands, borders included."""
  monkeypatch.setattr(conv_lib, "CHUNK_ROWS", chunk)
  x = jax.random.normal(jax.random.PRNGKey(0), (b, h, w, c))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, c, d))
  rounded = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)
  want = jax.lax.conv_general_dilated(rounded(x), rounded(k), (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST)
  got = conv_lib.conv3x3_rows(x, k)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bf16_decoder_equals_rounded_reference(monkeypatch, layout):
  """`conv_lib.for_decoding` params (bf16 conv kernels) run every decoder conv - 3x3 by row chunks, 1x1 - with bf16
  operands and f32 accumulation: equal to the explicit reference with rounded conv operands, not to f32. (On a CPU
  without AMX the 3x3 kernels go by Winograd instead: an AMX CPU is assumed here.)"""
  monkeypatch.setattr(conv_lib, "CHUNK_ROWS", 48)
  monkeypatch.setattr("arjax.host.has_amx", lambda flags=None: True)
  cfg, blocks_per_level, upsample_width = LAYOUTS[layout]
  dec = conv_lib.Decoder(cfg)
  z = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 4, 5))
  params = dec.init(jax.random.PRNGKey(3), z)["params"]
  bf16 = conv_lib.for_decoding({"decoder": params}, "bfloat16")["decoder"]
  got = dec.apply({"params": bf16}, z)
  assert got.dtype == jnp.float32
  want = Reference(params, cfg.groups, bf16_convs=True).decoder(z, cfg, blocks_per_level, upsample_width)
  f32 = Reference(params, cfg.groups).decoder(z, cfg, blocks_per_level, upsample_width)
  # a 1e-7 difference upstream can flip a bf16 rounding (an ulp is 0.4%), and the ldm layout's attention spreads a
  # flip over every pixel: on an AMX Xeon the mean error was ~2e-6, on an AVX512-BF16 one (other fusions) 4e-6
  # (compact) and 8.5e-5 (ldm), against ~3.5e-3 from f32 on both. A bug that rounds a product's output to bf16 or
  # skips the bf16 operands lands near the f32 figure.
  err, err_f32 = float(jnp.abs(got - want).mean()), float(jnp.abs(got - f32).mean())
  assert err < 0.1 * err_f32 and float(jnp.abs(got - want).max()) < 1e-2, (err, err_f32)
  assert err_f32 > 1e-3  # the bf16 path was taken


@pytest.mark.parametrize("b,h,w,c,d", [(2, 16, 16, 8, 6), (1, 7, 10, 3, 5), (2, 4, 4, 1, 1), (1, 1, 3, 2, 2)])
def test_winograd_conv3x3_equals_lax_conv(b, h, w, c, d):
  """Winograd F(4x4, 3x3) equals the SAME 3x3 lax conv: whole tiles, partial tiles (7 x 10), one tile, a 1-row image."""
  x = jax.random.normal(jax.random.PRNGKey(0), (b, h, w, c))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, c, d))
  want = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision=HIGHEST)
  got = conv_lib.winograd_conv3x3(x, conv_lib.winograd(k).u)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-5 * float(jnp.abs(want).max()), rtol=0)


def test_for_decoding_converts_only_the_decoders_conv_kernels(monkeypatch):
  """bf16: the decoder's conv kernels cast (on a CPU without AMX its wide 3x3 kernels as Winograd of the bf16
  values); f32 on CPU: its 3x3 kernels of >= WINOGRAD_MIN_CHANNELS as Winograd, narrower and 1x1 kernels as they are; with int8 where the VNNI kernel serves, 3x3 kernels of >= INT8_MIN_CHANNELS
  with C a multiple of 4 as per-channel Int8 (the rest as in f32); biases, norms, codebooks and the quantiser's
  convs untouched; idempotent."""
  monkeypatch.setattr(conv_lib, "WINOGRAD_MIN_CHANNELS", 2)
  monkeypatch.setattr(conv_lib, "INT8_MIN_CHANNELS", 4)
  tree = {"decoder": {"conv_in": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones(4)},
                      "conv_out": {"kernel": jnp.ones((3, 3, 4, 1))},
                      "nin": {"kernel": jnp.ones((1, 1, 4, 4))}, "norm": {"scale": jnp.ones(4)}},
          "phi_0": {"kernel": jnp.ones((3, 3, 4, 4))}, "embedding": jnp.ones((8, 4))}
  kinds = lambda t: {"/".join(k): type(v).__name__ if isinstance(v, (conv_lib.Winograd, quant.Int8)) else str(v.dtype)
                     for k, v in traverse_util.flatten_dict(t, is_leaf=lambda _, v: isinstance(v, quant.Int8)).items()}
  rest = {"decoder/conv_in/bias": "float32", "decoder/norm/scale": "float32", "phi_0/kernel": "float32",
          "embedding": "float32"}
  amx = True
  monkeypatch.setattr("arjax.host.has_amx", lambda flags=None: amx)
  out = conv_lib.for_decoding(tree, "bfloat16")
  assert kinds(out) == dict(rest, **{"decoder/conv_in/kernel": "bfloat16", "decoder/nin/kernel": "bfloat16",
                                     "decoder/conv_out/kernel": "bfloat16"})
  assert kinds(conv_lib.for_decoding(out, "bfloat16")) == kinds(out)
  amx = False
  tree["decoder"]["conv_in"]["kernel"] = jnp.full((3, 3, 2, 4), 1 + 2 ** -10)  # rounds to 1 in bf16
  out = conv_lib.for_decoding(tree, "bfloat16")
  assert kinds(out) == dict(rest, **{"decoder/conv_in/kernel": "Winograd", "decoder/nin/kernel": "bfloat16",
                                     "decoder/conv_out/kernel": "bfloat16"})
  np.testing.assert_array_equal(out["decoder"]["conv_in"]["kernel"].kernel, 1.0)
  tree["decoder"]["conv_in"]["kernel"] = jnp.ones((3, 3, 2, 4))
  out = conv_lib.for_decoding(tree, "float32")
  assert kinds(out) == dict(rest, **{"decoder/conv_in/kernel": "Winograd", "decoder/nin/kernel": "float32",
                                     "decoder/conv_out/kernel": "float32"})
  again = conv_lib.for_decoding(out, "float32")
  assert again["decoder"]["conv_in"]["kernel"] is out["decoder"]["conv_in"]["kernel"]
  np.testing.assert_array_equal(out["decoder"]["conv_in"]["kernel"].kernel, tree["decoder"]["conv_in"]["kernel"])
  tree["decoder"]["up"] = {"kernel": jnp.ones((3, 3, 4, 8))}
  out = conv_lib.for_decoding(tree, "float32", int8=True)
  int8 = "Int8" if cpu_int8.available() else "Winograd"
  assert kinds(out) == dict(rest, **{"decoder/conv_in/kernel": "Winograd", "decoder/up/kernel": int8,
                                     "decoder/nin/kernel": "float32", "decoder/conv_out/kernel": "float32"})
  assert conv_lib.for_decoding(out, "float32", int8=True)["decoder"]["up"]["kernel"] is out["decoder"]["up"]["kernel"]


def _prepared_decode(monkeypatch, layout, module, fn_name, int8=False):
  """The decoder of `layout` on f32 `for_decoding` params (int8 or not), counting the calls of module.fn_name:
  (output, latents, params, calls, number of 3x3 kernels)."""
  dec = conv_lib.Decoder(LAYOUTS[layout][0])
  z = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 4, 5))
  params = dec.init(jax.random.PRNGKey(3), z)["params"]
  calls, fn = [], getattr(module, fn_name)
  monkeypatch.setattr(module, fn_name, lambda *args: calls.append(1) or fn(*args))
  got = dec.apply({"params": conv_lib.for_decoding({"decoder": params}, "float32", int8)["decoder"]}, z)
  n_3x3 = sum(1 for k, v in traverse_util.flatten_dict(params).items() if k[-1] == "kernel" and v.shape[:2] == (3, 3))
  return got, z, params, len(calls), n_3x3


@pytest.mark.parametrize("layout", LAYOUTS)
def test_winograd_decoder_equals_f32_reference(monkeypatch, layout):
  """f32 `for_decoding` params run every 3x3 decoder conv by Winograd (counted; no channel floor) and equal the f32
  reference."""
  monkeypatch.setattr(conv_lib, "WINOGRAD_MIN_CHANNELS", 1)
  got, z, params, calls, n_3x3 = _prepared_decode(monkeypatch, layout, conv_lib, "winograd_conv3x3")
  cfg, blocks_per_level, upsample_width = LAYOUTS[layout]
  want = Reference(params, cfg.groups).decoder(z, cfg, blocks_per_level, upsample_width)
  assert calls == n_3x3 > 5
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not cpu_int8.available(), reason="the AVX512-VNNI kernel (such a CPU and a C++ compiler)")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_int8_decoder_equals_quantised_reference(monkeypatch, layout):
  """int8 `for_decoding` params run the 3x3 decoder convs of >= INT8_MIN_CHANNELS (C a multiple of 4) by the VNNI
  kernel (counted; conv_in's 5 channels and conv_out's 3 stay float) and equal the reference whose convs take
  per-pixel int8 activations and per-channel int8 kernels - not the f32 one."""
  monkeypatch.setattr(conv_lib, "INT8_MIN_CHANNELS", 4)
  got, z, params, calls, n_3x3 = _prepared_decode(monkeypatch, layout, cpu_int8, "conv3x3", int8=True)
  cfg, blocks_per_level, upsample_width = LAYOUTS[layout]
  want = Reference(params, cfg.groups, int8_min_channels=4).decoder(z, cfg, blocks_per_level, upsample_width)
  f32 = Reference(params, cfg.groups).decoder(z, cfg, blocks_per_level, upsample_width)
  assert calls == n_3x3 - 2
  # as with bf16: a float-rounding difference upstream can flip one rounding to int8 (a step is ~1% of a pixel's
  # largest channel), which the later convs spread; a kernel that drops a tap or a scale lands far from both
  err, err_f32 = float(jnp.abs(got - want).mean()), float(jnp.abs(got - f32).mean())
  assert err < 0.1 * err_f32, (err, err_f32)
  assert err_f32 > 1e-3  # the int8 path was taken


@pytest.mark.parametrize("shape,groups", [((2, 8, 6, 32), 8), ((3, 5, 12), 4), ((1, 4, 4, 6), 6)])
def test_group_norm_equals_float64_reference(shape, groups):
  """conv.GroupNorm (per-channel statistics, combined per group) has flax's parameter tree and equals a float64
  numpy group norm on inputs with a large mean, per-channel offsets (the between-channel part of a group's
  variance) and per-channel spreads (where a one-pass variance loses digits; flax's own two-pass one is off by
  1e-4 on the first case)."""
  c = shape[-1]
  x = 50.0 + jnp.linspace(-4.0, 4.0, c)[::-1] + jax.random.normal(jax.random.PRNGKey(0), shape) * jnp.linspace(
      0.1, 3.0, c)
  ours = conv_lib.GroupNorm(groups)
  params = flax.linen.GroupNorm(groups, epsilon=1e-6).init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == jax.tree.map(jnp.shape, params)
  scale, bias = (jax.random.uniform(jax.random.PRNGKey(i), (c,)) + 0.5 for i in (2, 3))
  x64 = np.asarray(x, np.float64).reshape(shape[0], -1, groups, c // groups)
  mean, var = x64.mean((1, 3), keepdims=True), x64.var((1, 3), keepdims=True)
  want = ((x64 - mean) / np.sqrt(var + 1e-6)).reshape(shape) * np.asarray(scale) + np.asarray(bias)
  got = jax.jit(ours.apply)({"params": {"scale": scale, "bias": bias}}, x)
  np.testing.assert_allclose(got, want, rtol=0, atol=5e-5)


def test_config_validation():
  with pytest.raises(ValueError, match="norm_groups=8 must divide"):
    conv_lib.ConvConfig.compact(12, (1, 2), 1, 8)
  with pytest.raises(ValueError, match="mid_blocks"):
    conv_lib.ConvConfig(8, (1,), 1, groups=4, mid_blocks=3)
  with pytest.raises(ValueError, match="ch_mult"):
    conv_lib.ConvConfig(8, (), 1, groups=4)


def test_tokenizers_use_the_compact_layout():
  c = dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8)
  assert VQTokenizer(dict(name="vq", **c)).net.stack == conv_lib.ConvConfig.compact(16, (1, 2, 2), 1, 8)
  assert VAETokenizer(dict(name="vae", **c)).net.stack == conv_lib.ConvConfig.compact(16, (1, 2, 2), 1, 8)
