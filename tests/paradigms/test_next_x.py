"""xAR next-X: entity masks equal the paper's groupings built cell by cell, training uses noisy
context with one time per entity, and the KV-cached entity sampler (with and without DiSA
annealing) equals recomputing the whole prefix at every solver step."""
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import random_params

from arjax.paradigms import block_diffusion
from arjax.paradigms import latent
from arjax.paradigms.next_x import NextX
from arjax.sampling import loop
from arjax.sampling import ode

H = W = 4
C = 3
TOKENIZER = types.SimpleNamespace(grid=(H, W), latent_dim=C)


def make(entity, size=2, pos="rope2d", steps_end=0, with_params=True):
  cfg = ml_collections.ConfigDict(dict(
      name="next_x", num_classes=3, width=32, label_drop=0.1, entity=entity, entity_size=size, scales=(1, 2, 4),
      flow=dict(steps=4, steps_end=steps_end, solver="euler", sde_scale=1.0),
      transformer=dict(depth=2, heads=2, kv_heads=1, pos=pos, qk_norm=True, impl="xla")))
  model = NextX(cfg, TOKENIZER, None)
  if not with_params:
    return model, None
  return model, random_params(model)


def entity_of(kind, r, c, k=2):
  """Which entity grid cell (r, c) belongs to, from the xAR definitions."""
  return {"token": r * W + c, "cell": (r // k) * (W // k) + c // k, "subsample": (r % k) * k + c % k,
          "image": 0}[kind]


@pytest.mark.parametrize("kind", ["token", "cell", "subsample", "image"])
def test_grid_entity_mask_is_attend_to_same_or_earlier_entity(kind):
  model, _ = make(kind, with_params=False)
  ent = np.array([entity_of(kind, r, c) for r in range(H) for c in range(W)])
  seq_ent = ent[model.layout.order]  # entity of each sequence position
  assert (np.diff(seq_ent) >= 0).all()  # entities are contiguous, in order
  np.testing.assert_array_equal(model.train_mask.dense(H * W, H * W), seq_ent[:, None] >= seq_ent[None, :])
  grid = jnp.arange(H * W, dtype=jnp.float32).reshape(1, H, W, 1)
  np.testing.assert_array_equal(model.layout.split(grid)[0, :, 0], model.layout.order)
  np.testing.assert_array_equal(model.layout.merge(model.layout.split(grid)), grid)


def test_mask_limits_full_sequence_diffusion_and_tokenwise_ar():
  n = H * W
  assert make("image", with_params=False)[0].train_mask.dense(n, n).all()
  np.testing.assert_array_equal(make("token", with_params=False)[0].train_mask.dense(n, n),
                                np.tril(np.ones((n, n), bool)))


def test_scale_entities_are_area_downsampled_maps_under_a_scale_causal_mask():
  model, _ = make("scale", with_params=False)
  lat = np.random.default_rng(0).standard_normal((2, H, W, C)).astype(np.float32)
  seq = np.asarray(model.layout.split(jnp.asarray(lat)))
  want = [lat.reshape(2, s, H // s, s, W // s, C).mean((2, 4)).reshape(2, -1, C) for s in (1, 2, 4)]
  np.testing.assert_allclose(seq, np.concatenate(want, 1), atol=1e-6)
  np.testing.assert_array_equal(model.layout.merge(jnp.asarray(seq)), lat)
  level = np.repeat([0, 1, 2], [1, 4, 16])
  np.testing.assert_array_equal(model.train_mask.dense(21, 21), level[:, None] >= level[None, :])


def test_training_uses_noisy_context_with_one_time_per_entity():
  model, params = make("cell")
  x1 = jnp.asarray(np.random.default_rng(0).standard_normal((2, H * W, C)), jnp.float32)
  xt, t_BS, eps = block_diffusion.noised(x1, model.layout.sizes, jax.random.PRNGKey(0))
  t = np.asarray(t_BS).reshape(2, 4, 4)  # 4 entities of 4 tokens
  assert (t == t[..., :1]).all() and len(np.unique(t[..., 0])) == 8
  np.testing.assert_allclose(xt, t_BS[..., None] * x1 + (1 - t_BS[..., None]) * eps, atol=1e-6)
  inputs, tt, _, _, out = model.train_inputs(x1, xt, t_BS)
  assert inputs is xt and tt is t_BS and out == slice(0, H * W)  # the clean x1 is never an input
  batch = dict(latent=model.layout.merge(x1), label=jnp.array([0, 1]))
  loss, _ = model.loss(params, batch, jax.random.PRNGKey(0))
  assert np.isfinite(loss)


def sample_by_recompute(model, params, label_B, rng, cfg_scale, steps_per_entity):
  """Entity by entity; every velocity recomputes [clean entities < k (t=1) ; x (t=tau)] from scratch."""
  b, sizes = label_B.shape[0], model.layout.sizes
  use_cfg = cfg_scale != 1.0
  cond = {"label": jnp.concatenate([label_B, jnp.full_like(label_B, 3)]) if use_cfg else label_B}
  done = jnp.zeros((b, 0, C))
  for k, size in enumerate(sizes):
    scale = 1 + (cfg_scale - 1) * k / max(len(sizes) - 1, 1)
    n = done.shape[1]

    def v_fn(x, tau, done=done, n=n, scale=scale):
      seq = jnp.concatenate([done, x], 1)
      seq = jnp.concatenate([seq, seq]) if use_cfg else seq
      t = jnp.concatenate([jnp.ones((seq.shape[0], n)), jnp.full((seq.shape[0], x.shape[1]), tau)], 1)
      v = model.net.apply({"params": params}, seq, cond, t, jnp.zeros(t.shape, bool), model.train_mask,
                          model.positions[:n + x.shape[1]])[0][:, n:]
      return v[b:] + scale * (v[:b] - v[b:]) if use_cfg else v

    rng, key = jax.random.split(rng)  # the sampler skeleton's key for unit k
    k0, k1 = jax.random.split(key)
    x0 = jax.random.normal(k0, (b, size, C))
    done = jnp.concatenate([done, ode.integrate(v_fn, x0, steps_per_entity[k], solver="euler", rng=k1)], 1)
  return model.layout.merge(done)


@pytest.mark.parametrize("kind,cfg_scale,steps_end,pos", [("cell", 1.0, 0, "rope2d"), ("subsample", 2.0, 0, "rope2d"),
                                                          ("scale", 2.0, 1, "rope2d"), ("cell", 1.0, 1, "learned"),
                                                          ("token", 2.0, 1, "rope2d"), ("image", 2.0, 0, "rope2d")])
def test_cached_sampler_equals_recompute(kind, cfg_scale, steps_end, pos):
  model, params = make(kind, pos=pos, steps_end=steps_end)
  n = model.layout.num_units
  # DiSA: steps go linearly from flow.steps (first entity) to steps_end (last), rounded
  steps = [4] * n if not steps_end else [int(np.round(4 + (steps_end - 4) * k / (n - 1))) for k in range(n)]
  label, rng = jnp.array([0, 2]), jax.random.PRNGKey(3)
  opts = lambda **o: loop.options(dict(cfg_scale=cfg_scale, cfg_schedule="linear", **o), latent.FLOW_OPTIONS)
  got = jax.jit(lambda p: model.sample_latents(p, {"label": label}, rng, opts()))(params)
  want = jax.jit(lambda p: sample_by_recompute(model, p, label, rng, cfg_scale, steps))(params)
  assert got.shape == (2, H, W, C) and np.abs(np.asarray(want)).max() > 0.1
  np.testing.assert_allclose(got, want, atol=2e-5)
  if steps_end:  # annealing really changes the result: the non-annealed sampler differs
    plain = jax.jit(lambda p: model.sample_latents(p, {"label": label}, rng, opts(steps_end=0)))(params)
    assert np.abs(np.asarray(plain) - np.asarray(got)).max() > 1e-3


def test_bad_entity_settings_are_errors_naming_the_key():
  with pytest.raises(ValueError, match="model.entity must be one of"):
    make("row", with_params=False)
  with pytest.raises(ValueError, match="model.entity_size=3"):
    make("cell", size=3, with_params=False)
