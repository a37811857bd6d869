"""VQ tokenizer: cosine lookup vs numpy, hand-computed losses, straight-through grads, dead-code restart, training."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from arjax.data.shapes import ShapesSource
from arjax.tokenizers import vq
from arjax.tokenizers.vq import VQNet, VQTokenizer

SMALL = dict(name="vq", ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8, codebook_size=64, code_dim=8)


def make(**overrides):
  tok = VQTokenizer(ml_collections.ConfigDict(dict(SMALL, **overrides)))
  return tok, jax.jit(tok.init)(jax.random.PRNGKey(0), dict(image=jnp.zeros((1, 32, 32, 3))))


def shapes_images(split, n):
  src = ShapesSource(split, num_examples=n)
  return np.stack([src[i]["image"] for i in range(n)]).astype(np.float32) / 127.5 - 1.0


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def setup():
  tok, params = make()
  return tok, params, jnp.asarray(shapes_images("test", 4))


def test_encode_decode_shapes_and_round_trip(setup):
  tok, params, x = setup
  assert (tok.grid, tok.vocab_size, tok.kind) == ((8, 8), 64, "discrete")
  tokens = jax.jit(tok.encode)(params, x)
  assert tokens.shape == (4, 8, 8) and tokens.dtype == jnp.int32
  assert 0 <= int(tokens.min()) and int(tokens.max()) < 64
  images = jax.jit(tok.decode)(params, tokens)
  assert images.shape == (4, 32, 32, 3) and images.dtype == jnp.float32
  assert float(jnp.abs(images).max()) <= 1.0
  rec, idx, _, _ = tok.net.apply({"params": params}, x)
  np.testing.assert_array_equal(np.asarray(idx), np.asarray(tokens))
  np.testing.assert_allclose(np.asarray(images), np.clip(np.asarray(rec), -1, 1), atol=1e-5)


def test_nearest_code_is_numpy_cosine_argmax():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(300, 8)).astype(np.float32)
  codebook = (rng.normal(size=(50, 8)) * rng.uniform(0.01, 10.0, size=(50, 1))).astype(np.float32)
  want = np.argmax(unit(z) @ unit(codebook).T, axis=-1)
  np.testing.assert_array_equal(np.asarray(vq.nearest_code(jnp.asarray(z), jnp.asarray(codebook))), want)
  assert (np.argmax(z @ codebook.T, axis=-1) != want).any()  # the code norms matter without normalisation


def test_encode_is_numpy_argmax_over_encoder_latents(setup):
  tok, params, x = setup
  z = np.asarray(tok.net.apply({"params": params}, x, method=VQNet.latents)).reshape(-1, 8)
  want = np.argmax(unit(z) @ unit(np.asarray(params["codebook"])).T, axis=-1).reshape(4, 8, 8)
  np.testing.assert_array_equal(np.asarray(tok.encode(params, x)), want)


def test_quantize_hand_values():
  z = jnp.array([[[[3.0, 0.0]]]])  # [1,1,1,2]
  codebook = jnp.array([[0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]])
  z_q, idx, codebook_loss, commit_loss = vq.quantize(z, codebook)
  assert int(idx[0, 0, 0]) == 1
  np.testing.assert_allclose(np.asarray(z_q[0, 0, 0]), [2 ** -0.5, 2 ** -0.5], rtol=1e-6)
  want = ((1 - 2 ** -0.5) ** 2 + 0.5) / 2  # mean over the two coordinates of |(1,0) - (1,1)/sqrt2|^2
  np.testing.assert_allclose([float(codebook_loss), float(commit_loss)], [want, want], rtol=1e-6)


@pytest.mark.parametrize("kind", ["mse", "l1", "mse+l1"])
def test_loss_equals_numpy_reference(setup, kind):
  tok, params, x = setup
  tok = VQTokenizer(ml_collections.ConfigDict(dict(SMALL, rec_loss=kind, beta=0.3)))
  loss, m = tok.loss(params, dict(image=x), None)
  z = unit(np.asarray(tok.net.apply({"params": params}, x, method=VQNet.latents), np.float64))
  codes = unit(np.asarray(params["codebook"], np.float64))
  idx = np.argmax(z @ codes.T, axis=-1)
  z_q = codes[idx]
  rec = np.asarray(tok.net.apply({"params": params}, jnp.asarray(z_q, jnp.float32), method=VQNet.decode_codes))
  err = rec - np.asarray(x)
  rec_l = dict(mse=np.mean(err ** 2), l1=np.mean(np.abs(err)), **{"mse+l1": np.mean(err ** 2) + np.mean(np.abs(err))})[kind]
  vq_l = np.mean((z - z_q) ** 2)
  np.testing.assert_allclose(float(loss), rec_l + (1 + 0.3) * vq_l, rtol=1e-4)
  np.testing.assert_allclose([float(m["rec_loss"]), float(m["codebook_loss"]), float(m["commit_loss"])],
                             [rec_l, vq_l, vq_l], rtol=1e-4)
  mse01 = np.mean(((np.clip(rec, -1, 1) - np.asarray(x)) / 2) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(float(m["psnr"]), np.mean(-10 * np.log10(mse01)), rtol=1e-4)
  counts = np.bincount(idx.reshape(-1), minlength=64)
  p = counts[counts > 0] / idx.size
  np.testing.assert_allclose([float(m["usage"]), float(m["perplexity"])],
                             [np.mean(counts > 0), np.exp(-np.sum(p * np.log(p)))], rtol=1e-5)


def test_straight_through_gradients(setup):
  tok, params, x = setup

  def rec_only(p):
    rec = tok.net.apply({"params": p}, x)[0]
    return jnp.mean(jnp.square(rec - x))

  g = jax.jit(jax.grad(rec_only))(params)
  for name in ("encoder", "quant_proj", "decoder", "post_proj"):
    assert max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(g[name])) > 0, name
  assert float(jnp.abs(g["codebook"]).max()) == 0.0  # the rec loss bypasses the codebook (straight-through)
  g_full = jax.jit(jax.grad(lambda p: tok.loss(p, dict(image=x), None)[0]))(params)
  used = np.zeros(64, bool)
  used[np.unique(np.asarray(tok.encode(params, x)))] = True
  row_norms = np.abs(np.asarray(g_full["codebook"])).max(-1)
  assert (row_norms[used] > 0).all() and (row_norms[~used] == 0).all()


def test_maintain_replaces_exactly_the_unused_codes(setup):
  tok, params, x = setup
  batch = dict(image=x)
  used = np.zeros(64, bool)
  used[np.unique(np.asarray(tok.encode(params, x)))] = True
  assert 0 < used.sum() < 64
  new = jax.jit(tok.maintain)(params, batch, jax.random.PRNGKey(3))
  old_cb, new_cb = np.asarray(params["codebook"]), np.asarray(new["codebook"])
  np.testing.assert_array_equal(new_cb[used], old_cb[used])
  assert (np.abs(new_cb[~used] - old_cb[~used]).max(-1) > 0).all()
  latents = unit(np.asarray(tok.net.apply({"params": params}, x, method=VQNet.latents)).reshape(-1, 8))
  dist = np.abs(new_cb[~used][:, None, :] - latents[None]).max(-1)  # [dead, N]
  assert dist.min(-1).max() < 1e-5  # every restarted code is a unit latent of the batch
  assert len(set(dist.argmin(-1))) == (~used).sum()  # ... and distinct ones
  for name in ("encoder", "decoder", "quant_proj", "post_proj"):
    jax.tree.map(np.testing.assert_array_equal, new[name], params[name])
  again = tok.maintain(params, batch, jax.random.PRNGKey(3))  # eager == jit, up to conv / norm rounding (1.2e-6
  np.testing.assert_allclose(np.asarray(again["codebook"]), new_cb, atol=1e-5)  # seen; a wrong code is off by ~0.1)
  _, m_old = tok.loss(params, batch, None)
  _, m_new = tok.loss(new, batch, None)
  assert float(m_new["usage"]) > float(m_old["usage"])


def test_training_improves_psnr():
  tok, params = make(codebook_size=128)
  train, test = shapes_images("train", 512), jnp.asarray(shapes_images("test", 64))
  tx = optax.adam(optax.warmup_constant_schedule(0.0, 3e-3, 20))
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, x):
    grads = jax.grad(lambda p: tok.loss(p, dict(image=x), None)[0])(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  maintain = jax.jit(tok.maintain)
  evaluate = jax.jit(lambda p: tok.loss(p, dict(image=test), None)[1])
  before = evaluate(params)
  rng = np.random.default_rng(0)
  for i in range(150):
    x = jnp.asarray(train[rng.integers(0, len(train), 16)])
    if i % 10 == 0 and i < 120:
      params = maintain(params, dict(image=x), jax.random.PRNGKey(i))
    params, opt = step(params, opt, x)
  after = evaluate(params)
  assert float(after["psnr"]) > 20.0 and float(after["psnr"]) > float(before["psnr"]) + 8.0, (before, after)
  assert float(after["usage"]) > 0.5, after


def test_bad_config_and_input_raise():
  with pytest.raises(ValueError, match="codebok_size"):
    VQTokenizer(ml_collections.ConfigDict(dict(SMALL, codebok_size=3)))
  with pytest.raises(ValueError, match="rec_loss"):
    VQTokenizer(ml_collections.ConfigDict(dict(SMALL, rec_loss="l2")))
  with pytest.raises(ValueError, match="norm_groups"):
    VQTokenizer(ml_collections.ConfigDict(dict(SMALL, ch=12)))
  tok, params = make()
  with pytest.raises(ValueError, match=r"batch\['image'\]"):
    tok.encode(params, jnp.zeros((2, 16, 16, 3)))
  with pytest.raises(ValueError, match="tokens"):
    tok.decode(params, jnp.zeros((2, 4, 4), jnp.int32))
