"""Multi-scale residual VQ: reconstructions improve monotonically as scales are added, teacher inputs are
the downsampled cumulative f_hat, upkeep."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.nn.resize import resize
from arjax.tokenizers import multiscale_vq as msvq

jax.config.update("jax_default_matmul_precision", "highest")
CFG = dict(name="msvq", ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, code_dim=4, vocab_size=64,
           patch_nums=(1, 2, 3, 4, 6, 8), image_size=32, attn=True, norm_groups=4)


def test_phi_choice_follows_var_ticks():
  # 10 scales, 4 shared convs at ticks (1/12, 13/36, 23/36, 11/12) vs k/9; k=2 and k=7 are exact ties
  # (1/12 + 5/36 = 2/9) that VAR's float argmin resolves upwards, to convs 1 and 3
  assert [msvq.phi_index(i, 10, 4) for i in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
  assert [msvq.phi_index(i, 6, 1) for i in range(6)] == [0] * 6


def _tokenizer():
  tok = msvq.MultiScaleVQ(CFG)
  params = nn.meta.unbox(jax.jit(tok.init)(jax.random.PRNGKey(0), dict(image=jnp.zeros((1, 32, 32, 3)))))
  return tok, params


def test_reconstruction_improves_monotonically_with_scales():
  """With a codebook of the data's own latent vectors (and zero), every added scale lowers the latent
  error of f_hat (the untrained decoder is not contractive, so in image space only the full set is
  checked to be best); decode of a prefix of scales decodes that prefix's f_hat."""
  tok, params = _tokenizer()
  images = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3), minval=-1, maxval=1)
  f = jax.jit(lambda p, x: tok._apply(p, msvq.MultiScaleVQNet.features, x))(params, images)
  pool = f.reshape(-1, 4)
  codes = jnp.concatenate([jnp.zeros((1, 4)), pool[np.linspace(0, pool.shape[0] - 1, 63).astype(int)]])
  params = {**params, "embedding": codes}
  tokens, f_hats, _ = jax.jit(tok._quantize)(params, f)
  lat = [float(jnp.mean((fh - f) ** 2)) for fh in f_hats]
  assert all(b < a for a, b in zip(lat, lat[1:])), lat
  to_image = jax.jit(lambda p, z: tok._apply(p, msvq.MultiScaleVQNet.to_image, z))
  target = to_image(params, f)
  rec = [float(jnp.mean((to_image(params, fh) - target) ** 2)) for fh in f_hats]
  assert rec[-1] < min(rec[:-1]), rec
  np.testing.assert_allclose(jax.jit(tok.tokens_to_fhat)(params, tokens[:3]), f_hats[2], atol=1e-5)
  np.testing.assert_allclose(jax.jit(tok.decode)(params, tokens[:3]), jnp.clip(to_image(params, f_hats[2]), -1, 1),
                             atol=1e-5)


def test_teacher_inputs_are_downsampled_cumulative_fhat_and_maintain_restarts_dead_codes():
  tok, params = _tokenizer()
  images = jax.random.uniform(jax.random.PRNGKey(2), (2, 32, 32, 3), minval=-1, maxval=1)
  tokens = tok.encode(params, images)
  assert [t.shape for t in tokens] == [(2, p, p) for p in CFG["patch_nums"]]
  inputs = tok.teacher_inputs(params, tokens)
  assert inputs.shape == (2, sum(p * p for p in CFG["patch_nums"][1:]), 4)
  for k in range(1, len(tokens)):
    start = sum(p * p for p in CFG["patch_nums"][1:k])
    pn = CFG["patch_nums"][k]
    want = resize(tok.tokens_to_fhat(params, tokens[:k]), pn, "area").reshape(2, -1, 4)
    np.testing.assert_allclose(inputs[:, start:start + pn * pn], want, atol=1e-5)
  used = np.unique(np.concatenate([np.asarray(t).ravel() for t in tokens]))
  new = jax.jit(tok.maintain)(params, dict(image=images), jax.random.PRNGKey(0))
  dead = np.setdiff1d(np.arange(64), used)
  assert len(dead) > 0
  np.testing.assert_array_equal(new["embedding"][used], params["embedding"][used])
  assert np.all(np.any(np.asarray(new["embedding"][dead]) != np.asarray(params["embedding"][dead]), -1))
  loss, metrics = jax.jit(tok.loss)(params, dict(image=images), jax.random.PRNGKey(0))
  assert np.isfinite(loss) and 0 < metrics["usage"] <= 1


def test_bad_patch_nums_is_a_clear_error():
  with pytest.raises(ValueError, match="patch_nums"):
    msvq.MultiScaleVQ({**CFG, "patch_nums": (1, 2, 4)})
