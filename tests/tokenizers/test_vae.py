"""VAE tokenizer: KL in closed form, the data-driven latent scale, shapes and errors."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from arjax.tokenizers.vae import VAENet, VAETokenizer, kl_to_standard_normal

CFG = dict(name="vae", image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4, latent_dim=3,
           kl_weight=0.5, rec_loss="mse", std_momentum=0.75)


def make():
  vae = VAETokenizer(ml_collections.ConfigDict(CFG))
  images = jax.random.uniform(jax.random.PRNGKey(0), (4, 16, 16, 3), minval=-1, maxval=1)
  params = jax.jit(lambda r: vae.init(r, dict(image=images)))(jax.random.PRNGKey(1))
  return vae, params, images


def test_kl_matches_gaussian_formula_and_loss_adds_it():
  rng = np.random.default_rng(0)
  mean, logvar = rng.standard_normal((2, 5)).astype(np.float32), rng.standard_normal((2, 5)).astype(np.float32)
  var = np.exp(logvar)
  # KL(N(m, v) || N(0, 1)) = (v + m^2 - 1 - log v) / 2
  np.testing.assert_allclose(kl_to_standard_normal(mean, logvar), (var + mean ** 2 - 1 - logvar) / 2, rtol=1e-5)
  vae, params, images = make()
  loss, m = vae.loss(params, dict(image=images), jax.random.PRNGKey(2), train=False)
  mean, logvar = vae.net.apply({"params": params}, images, method=VAENet.posterior)
  rec = vae.net.apply({"params": params}, mean, method=VAENet.decode_latents)
  mean, logvar, rec = (np.asarray(a, np.float64) for a in (mean, logvar, rec))
  kl = np.mean((np.exp(logvar) + mean ** 2 - 1 - logvar) / 2)
  want = np.mean((rec - np.asarray(images)) ** 2) + 0.5 * kl
  np.testing.assert_allclose(loss, want, rtol=1e-4)
  np.testing.assert_allclose(m["kl"], kl, rtol=1e-4)


def test_latent_scale_is_computed_from_data_and_round_trips():
  vae, params, images = make()
  mean, _ = vae.net.apply({"params": params}, images, method=VAENet.posterior)
  std = float(np.std(np.asarray(mean)))
  p1 = vae.maintain(params, dict(image=images), None)
  np.testing.assert_allclose(p1["latent_std"], std, rtol=1e-5)  # first call: the batch value
  p2 = vae.maintain(p1, dict(image=images[:2]), None)
  std2 = float(np.std(np.asarray(vae.net.apply({"params": params}, images[:2], method=VAENet.posterior)[0])))
  np.testing.assert_allclose(p2["latent_std"], 0.75 * std + 0.25 * std2, rtol=1e-5)
  z = vae.encode(p1, images)
  assert z.shape == (4, 8, 8, 3) and vae.grid == (8, 8) and vae.kind == "continuous"
  np.testing.assert_allclose(np.std(np.asarray(z)), 1.0, rtol=1e-4)
  # decode undoes the scaling: decoding scaled latents equals decoding the raw means
  raw = jnp.clip(vae.net.apply({"params": params}, mean, method=VAENet.decode_latents), -1, 1)
  np.testing.assert_allclose(vae.decode(p1, z), raw, atol=1e-5)
  # the loss does not read latent_std: zero gradient
  g = jax.grad(lambda p: vae.loss(p, dict(image=images), jax.random.PRNGKey(0))[0])(p1)
  assert float(g["latent_std"]) == 0.0


def test_bad_inputs_are_clear_errors():
  vae, params, images = make()
  with pytest.raises(ValueError, match=r"latents must be \[B, 8, 8, 3\]"):
    vae.decode(params, jnp.zeros((1, 4, 4, 3)))
  with pytest.raises(ValueError, match=r"batch\['image'\]"):
    vae.encode(params, jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="multiple of the downsampling"):
    VAETokenizer(ml_collections.ConfigDict(dict(CFG, image_size=15)))
  with pytest.raises(ValueError, match="unknown key"):
    VAETokenizer(ml_collections.ConfigDict(dict(CFG, latnet_dim=3)))
