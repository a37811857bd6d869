"""ACDiT block diffusion: SCAM masks equal the paper's rule and its two limits (full-sequence
diffusion, token-wise AR), and the KV-cached block sampler equals full recomputation."""
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import random_params

from arjax.paradigms import latent
from arjax.paradigms.block_diffusion import BlockDiffusion
from arjax.sampling import loop
from arjax.sampling import ode

TOKENIZER = types.SimpleNamespace(grid=(4, 4), latent_dim=3)
N = 16


def make(block, pos="rope2d", with_params=True, cond="class"):
  cfg = ml_collections.ConfigDict(dict(
      name="block_diffusion", num_classes=3, cond=cond, width=32, label_drop=0.1, block_size=block,
      flow=dict(steps=3, steps_end=0, solver="euler", sde_scale=1.0),
      transformer=dict(depth=2, heads=2, kv_heads=1, pos=pos, qk_norm=True, impl="xla")))
  model = BlockDiffusion(cfg, TOKENIZER, None)
  if not with_params:
    return model, None
  return model, random_params(model)


def scam_by_rule(block, n):
  """[clean ; noised] mask from the ACDiT rule, element by element."""
  out = np.zeros((2 * n, 2 * n), bool)
  for q in range(2 * n):
    for k in range(2 * n):
      qb, kb = (q % n) // block, (k % n) // block
      if q < n:
        out[q, k] = k < n and kb <= qb
      else:
        out[q, k] = (k >= n and kb == qb) or (k < n and kb < qb)
  return out


@pytest.mark.parametrize("block", [1, 2, 4, 16])
def test_mask_is_scam(block):
  model, _ = make(block, with_params=False)
  np.testing.assert_array_equal(model.train_mask.dense(2 * N, 2 * N), scam_by_rule(block, N))


def test_mask_limits_full_sequence_diffusion_and_tokenwise_ar():
  full_seq = make(N, with_params=False)[0].train_mask.dense(2 * N, 2 * N)
  assert full_seq[N:, N:].all() and not full_seq[N:, :N].any()  # noised tokens: plain full attention
  ar = make(1, with_params=False)[0].train_mask.dense(2 * N, 2 * N)
  np.testing.assert_array_equal(ar[:N, :N], np.tril(np.ones((N, N), bool)))  # clean stream is causal
  np.testing.assert_array_equal(ar[N:, :N], np.tril(np.ones((N, N), bool), -1))  # token i sees clean < i
  np.testing.assert_array_equal(ar[N:, N:], np.eye(N, dtype=bool))  # ... and only itself among noised
  assert not ar[:N, N:].any()


@pytest.mark.parametrize("block", [1, N])
def test_outputs_depend_only_on_visible_clean_tokens(block):
  model, params = make(block)
  rng = np.random.default_rng(0)
  x1, xt = (jnp.asarray(rng.standard_normal((2, N, 3)), jnp.float32) for _ in range(2))
  t = jnp.asarray(rng.uniform(size=(2, N)), jnp.float32)
  cond = {"label": jnp.array([0, 2])}

  @jax.jit
  def noised_out(x1):
    inputs, tt, flags, pos, out = model.train_inputs(x1, xt, t)
    return model.net.apply({"params": params}, inputs, cond, tt, flags, model.train_mask, pos)[0][:, out]

  base = np.asarray(noised_out(x1))
  for i in (0, 7, 15):
    changed = noised_out(x1.at[:, i].add(3.0))
    moved = np.abs(changed - base).max(axis=(0, 2)) > 1e-6
    expected = np.zeros(N, bool) if block == N else np.arange(N) > i
    np.testing.assert_array_equal(moved, expected)


def test_adaln_modulates_only_the_noised_tokens():
  model, params = make(4)
  rng = np.random.default_rng(1)
  x1, xt = (jnp.asarray(rng.standard_normal((1, N, 3)), jnp.float32) for _ in range(2))
  t = jnp.asarray(rng.uniform(size=(1, N)), jnp.float32)

  def out(label, t):
    inputs, tt, flags, pos, _ = model.train_inputs(x1, xt, t)
    return np.asarray(model.net.apply({"params": params}, inputs, {"label": jnp.array([label])}, tt, flags,
                                      model.train_mask, pos)[0])

  base = out(0, t)
  for other in (out(2, t), out(0, 1 - t)):  # another class, other times
    np.testing.assert_allclose(other[:, :N], base[:, :N], atol=1e-6)  # clean stream: no class / time input
    assert np.abs(other[:, N:] - base[:, N:]).min() > 1e-6  # every noised token is conditioned


def sample_by_recompute(model, params, cond, rng, cfg_scale, solver, temperature=1.0):
  """The block sampler with the full [clean ; noised] sequence recomputed at every solver step."""
  b, size, n_blocks = model.conditioner.batch_size(cond), model.layout.sizes[0], model.layout.num_units
  use_cfg = cfg_scale != 1.0
  cond = model.conditioner.double(cond) if use_cfg else cond  # [cond ; null]
  clean = jnp.zeros((b, N, 3))
  for k in range(n_blocks):
    scale = 1 + (cfg_scale - 1) * k / max(n_blocks - 1, 1)

    def v_fn(x, tau, k=k, clean=clean, scale=scale):
      noised = jnp.zeros((b, N, 3)).at[:, k * size:(k + 1) * size].set(x)
      seq = jnp.concatenate([clean, noised], 1)
      seq = jnp.concatenate([seq, seq]) if use_cfg else seq
      bb = seq.shape[0]
      t = jnp.concatenate([jnp.ones((bb, N)), jnp.full((bb, N), tau)], 1)
      flags = jnp.concatenate([jnp.ones((bb, N), bool), jnp.zeros((bb, N), bool)], 1)
      pos = np.concatenate([model.positions] * 2)
      v = model.net.apply({"params": params}, seq, cond, t, flags, model.train_mask, pos)[0]
      v = v[:, N + k * size:N + (k + 1) * size]
      return v[b:] + scale * (v[:b] - v[b:]) if use_cfg else v

    rng, key = jax.random.split(rng)  # the sampler skeleton's key for unit k
    k0, k1 = jax.random.split(key)
    x0 = temperature * jax.random.normal(k0, (b, size, 3))
    clean = clean.at[:, k * size:(k + 1) * size].set(ode.integrate(v_fn, x0, 3, solver=solver, rng=k1))
  return clean.reshape(b, 4, 4, 3)


@pytest.mark.parametrize("block,cfg_scale,solver,pos,cond", [(4, 1.0, "euler", "rope2d", "class"),
                                                             (2, 2.5, "heun", "rope2d", "class"),
                                                             (4, 2.0, "euler", "rope1d", "caption"),
                                                             (8, 1.0, "euler_maruyama", "learned", "class")])
def test_cached_sampler_equals_recompute(block, cfg_scale, solver, pos, cond):
  model, params = make(block, pos, cond=cond)
  if cond == "class":
    c = {"label": jnp.array([0, 2])}
  else:
    c = {"caption": jnp.zeros((2, 64), jnp.uint8).at[0, :3].set(jnp.array([97, 98, 99], jnp.uint8)).at[1, :1].set(65)}
  rng = jax.random.PRNGKey(3)
  opts = loop.options(dict(cfg_scale=cfg_scale, cfg_schedule="linear", solver=solver), latent.FLOW_OPTIONS)
  got = jax.jit(lambda p: model.sample_latents(p, c, rng, opts))(params)
  want = jax.jit(lambda p: sample_by_recompute(model, p, c, rng, cfg_scale, solver))(params)
  assert np.abs(np.asarray(want)).max() > 0.1
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_loss_is_finite_and_bad_block_size_is_an_error():
  model, params = make(4)
  batch = dict(latent=jnp.ones((2, 4, 4, 3)), label=jnp.array([0, 1]))
  loss, metrics = model.loss(params, batch, jax.random.PRNGKey(0))
  assert np.isfinite(loss) and set(metrics) == {"mse"}
  with pytest.raises(ValueError, match="block_size=3"):
    make(3, with_params=False)
  with pytest.raises(ValueError, match="unknown sampling option"):
    model.sample(params, {"label": jnp.array([0])}, jax.random.PRNGKey(0), num_iter=3)
