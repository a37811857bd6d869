"""JPEG-LM: the constraint automaton against real files and an independent bit-by-bit validator, random-weight
samples against Pillow, the cached sampler against the teacher-forced network, and bad-input errors."""
import functools
import io

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image, ImageFile

from arjax import registry
from arjax.data import shapes
from arjax.paradigms import jpeg_lm
from arjax.sampling import jpeg_grammar as G
from arjax.sampling import loop
from arjax.tokenizers import jpeg

MAX_LEN = 176


def _cfg(**over):
  model = dict(name="jpeg_lm", num_classes=3, width=32, label_drop=0.1, image_size=32, quality=25, max_len=MAX_LEN,
               transformer=dict(depth=1, heads=2, mlp="swiglu", mlp_ratio=2.0, norm="rms", impl="xla"))
  model.update(over)
  return ml_collections.ConfigDict(dict(model=model))


@pytest.fixture(scope="module")
def model():
  return registry.build_model(_cfg())


def _random_params(model, seed=0):
  """Init params with the zero-initialised leaves (the output head) drawn too, so random logits are not flat."""
  params = model.init(jax.random.PRNGKey(seed), None)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.5 * jax.random.normal(k, x.shape) if not np.any(x) else x
                                   for x, k in zip(leaves, keys)])


def _real(n=6, size=32):
  src = shapes.ShapesSource("test", n, size)
  return [jpeg.encode(src[i]["image"]) for i in range(n)]


@functools.lru_cache(maxsize=None)
def _jitted_scan(g):
  return jax.jit(g.scan)


def _scan(g, tokens, length=200):
  """The automaton's allowed tokens [n, 257] before each of n tokens (padded with EOS: one compile per grammar)."""
  padded = np.full(length, G.EOS, np.int64)
  padded[:len(tokens)] = tokens
  allowed, final = _jitted_scan(g)(padded)
  return np.asarray(allowed)[:len(tokens)], final


def _pillow_decodes(data, size=32):
  assert not ImageFile.LOAD_TRUNCATED_IMAGES
  with Image.open(io.BytesIO(data)) as im:
    im.load()
    return im.size == (size, size) and im.mode == "RGB"


def test_the_constraint_never_masks_a_real_file():
  g = G.grammar(32, 32, 25, MAX_LEN)
  rng = np.random.default_rng(0)
  noisy = jpeg.encode(np.clip(rng.normal(128, 20, (32, 32, 3)), 0, 255).astype(np.uint8))  # long, many 0xFF
  for data in _real() + [noisy]:
    assert G.check(jpeg.to_file(data), 32, 32) is None
    tokens = np.append(data, G.EOS)
    allowed, final = _scan(g, tokens, 400)
    assert allowed[np.arange(len(tokens)), tokens].all()
    assert int(final.phase[0]) == G.FINISHED
    assert allowed[:len(g.header)].sum(1).tolist() == [1] * len(g.header)  # the header is forced


def test_the_automaton_agrees_with_the_reference_validator_on_corrupted_files():
  g = G.grammar(32, 32, 25, 4096)
  rng = np.random.default_rng(1)
  real, agree, rejected = _real(4), 0, 0
  for trial in range(48):
    data = real[trial % 4].copy()
    i = rng.integers(len(g.header), len(data) - 2)
    data[i] = rng.integers(0, 256) if trial % 2 else data[i] ^ (1 << rng.integers(0, 8))
    tokens = np.append(data, G.EOS)
    dfa_ok = bool(_scan(g, tokens)[0][np.arange(len(tokens)), tokens].all())
    ref_ok = G.check(jpeg.to_file(data), 32, 32) is None
    agree += dfa_ok == ref_ok
    rejected += not ref_ok
  assert agree == 48 and rejected > 10


def test_random_walks_of_the_automaton_always_decode():
  """Random draws among the allowed tokens (random logits, 0xFF favoured: stuffing must fit the budget), under a
  tight budget: every row ends at EOS within max_len and passes both the reference validator and Pillow."""
  g = G.grammar(32, 32, 25, 100)

  @jax.jit
  def walk(rng):
    def body(carry, t):
      st, rng = carry
      rng, k1, k2 = jax.random.split(rng, 3)
      logits = 2.0 * jax.random.normal(k1, (256, G.VOCAB)) + 3.0 * (jnp.arange(G.VOCAB) == 0xFF)
      tok = jax.random.categorical(k2, jnp.where(g.mask(st, t), logits, -1e30))
      return (g.advance(st, tok), rng), tok
    return jax.lax.scan(body, (g.init(256), rng), jnp.arange(101))[1].T

  for row in np.asarray(walk(jax.random.PRNGKey(0))):
    ends = np.flatnonzero(row == G.EOS)
    assert len(ends), "a row did not end within max_len"
    data = jpeg.to_file(row[:ends[0]].astype(np.uint8))
    assert G.check(data, 32, 32) is None and _pillow_decodes(data)


def test_reference_validator_flags_broken_streams():
  data = _real(1)[0]
  full = jpeg.to_file(data)
  assert "marker" in G.check(full[:-2] + b"\xff\xd0", 32, 32)
  assert "no marker" in G.check(full[:-2], 32, 32)
  assert "after EOI" in G.check(full + b"\x00", 32, 32)
  assert "header" in G.check(jpeg.to_file(jpeg.encode(np.zeros((16, 32, 3), np.uint8))), 32, 32)


def test_init_preprocess_and_loss(model):
  params = model.init(jax.random.PRNGKey(0), None)
  src = shapes.ShapesSource("train", 3, 32)
  images = np.stack([src[i]["image"] for i in range(3)]).astype(np.float32) / 127.5 - 1
  batch = jax.jit(model.preprocess)(dict(image=images, label=np.arange(3), caption=np.zeros((3, 64), np.uint8)))
  tokens = np.asarray(batch["tokens"])
  assert sorted(batch) == ["label", "tokens"] and tokens.shape == (3, MAX_LEN + 2)
  for row, i in zip(tokens, range(3)):
    n = int(np.flatnonzero(row == jpeg_lm.EOS)[0])
    assert row[0] == jpeg_lm.BOS and (row[n + 1:] == jpeg_lm.PAD).all()
    np.testing.assert_array_equal(row[1:n], jpeg.encode(src[i]["image"]))
  loss, metrics = jax.jit(model.loss, static_argnums=3)(params, batch, jax.random.PRNGKey(1), False)
  logp = jax.nn.log_softmax(jax.jit(model.logits)(params, batch, batch["tokens"]))  # dense reference of the masked mean
  keep = (tokens != jpeg_lm.PAD) & (tokens != jpeg_lm.BOS)
  nll = -np.take_along_axis(np.asarray(logp), tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, nll[keep].mean(), rtol=1e-5)
  np.testing.assert_allclose(jax.jit(model.nll)(params, batch), (nll * keep).sum(1), rtol=1e-5)
  assert float(metrics["bytes_per_image"]) == keep.sum() / 3 - 1


def test_random_weight_samples_decode_and_prefixes_are_kept(model, monkeypatch):
  monkeypatch.setattr(loop, "CHUNK_MIN_SLOTS", 0)  # the decode loop in loop.CHUNKS loops over cut caches
  jax.clear_caches()  # (the sampler's jit cache may hold a trace made without them)
  params = _random_params(model)
  real = _real(4)
  prompts = [jpeg_lm.prefix(t, n) for t, n in zip(real, range(4))]
  assert len(prompts[0]) == len(G.grammar(32, 32, 25, MAX_LEN).header)
  files = model.sample_files(params, np.array([0, 1, 2, 0]), jax.random.PRNGKey(1), prompts=prompts,
                             top_k=50, top_p=0.9)
  for f, p in zip(files, prompts):
    prompt_file = jpeg.to_file(p)
    assert f[:len(prompt_file)] == prompt_file
    assert G.check(f, 32, 32) is None and _pillow_decodes(f)
  # greedy (temperature 0) cached decoding == the argmax of the teacher-forced network under the same masks
  cond = dict(label=np.array([0, 1, 2, 0]), **model._prompts(prompts, 4))
  tokens = np.asarray(model.sample_tokens(params, cond, jax.random.PRNGKey(2), top_k=50, top_p=0.9, temperature=0.0))
  logits = np.asarray(jax.jit(model.logits)(params, {"label": cond["label"]}, jnp.asarray(tokens)))
  g = G.grammar(32, 32, 25, MAX_LEN)
  for b in range(4):
    n = int(np.flatnonzero(tokens[b] == jpeg_lm.EOS)[0])
    allowed = _scan(g, tokens[b, 1:n + 1])[0]
    start = cond["prompt_len"][b]
    masked = np.where(allowed[start - 1:n], logits[b, start:n + 1, :G.VOCAB], -np.inf)
    chosen = np.take_along_axis(masked, tokens[b, start:n + 1, None], -1)[:, 0]
    # the sampler may run in bf16: its pick is the f32 argmax or within bf16 rounding of it
    top = masked.max(-1)
    assert np.all(chosen >= top - 0.05 * (1 + np.abs(top)))
    assert np.mean(masked.argmax(-1) == tokens[b, start:n + 1]) > 0.8


def test_sample_returns_images_in_range(model):
  params = _random_params(model, seed=3)
  images = np.asarray(model.sample(params, {"label": jnp.arange(2)}, jax.random.PRNGKey(0), cfg_scale=2.0))
  assert images.shape == (2, 32, 32, 3) and images.min() >= -1 and images.max() <= 1 and images.std() > 0


def test_bad_input_errors(model):
  params = model.init(jax.random.PRNGKey(0), None)
  with pytest.raises(ValueError, match="quality must be an int"):
    registry.build_model(_cfg(quality=99))
  with pytest.raises(ValueError, match="max_len=80 is too short"):
    registry.build_model(_cfg(max_len=80))
  with pytest.raises(ValueError, match="rope1d"):
    registry.build_model(_cfg(transformer=dict(depth=1, heads=2, pos="rope2d")))
  with pytest.raises(ValueError, match="unknown key"):
    registry.build_model(_cfg(image_sizes=32))
  with pytest.raises(ValueError, match="label_B must be int"):
    model.sample_files(params, np.zeros((2, 2)), jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="2 prompts for 1"):
    model.sample_files(params, np.zeros(1), jax.random.PRNGKey(0), prompts=[b"", b""])
  with pytest.raises(ValueError, match="leaves no room"):
    model.sample_files(params, np.zeros(1), jax.random.PRNGKey(0), prompts=[np.zeros(MAX_LEN, np.uint8)])
  with pytest.raises(ValueError, match="restart markers"):
    jpeg_lm.prefix(_real(1)[0], 4)
  with pytest.raises(ValueError, match="unknown sampling option"):
    model.sample_files(params, np.zeros(1), jax.random.PRNGKey(0), constraint=True)
  with pytest.raises(ValueError, match="exceeds model.max_len"):
    jpeg_lm.encode_batch(np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)), 25, 100)
