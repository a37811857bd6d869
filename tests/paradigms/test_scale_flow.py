"""FlowAR scale-wise flow: scale targets and inputs equal FlowAR's torch resizing, the mask is
causal over scales, and the KV-cached scale sampler (CFG ramp, DiSA annealing) equals a full
teacher-forced pass over the sampled scales followed by the same head solves."""
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import random_params

from arjax.paradigms import latent
from arjax.paradigms.scale_flow import ScaleFlow
from arjax.sampling import loop

G, C = 8, 3
TOKENIZER = types.SimpleNamespace(grid=(G, G), latent_dim=C)


def make(scales=(1, 2, 4, 8), steps_end=0, with_params=True):
  cfg = ml_collections.ConfigDict(dict(
      name="scale_flow", num_classes=3, width=32, label_drop=0.1, scales=scales,
      transformer=dict(depth=2, heads=2, kv_heads=1, pos="learned", qk_norm=True, norm="rms", impl="xla"),
      head=dict(kind="flow", width=32, depth=2, steps=4, steps_end=steps_end, solver="heun", sde_scale=1.0,
                batch_mul=1)))
  model = ScaleFlow(cfg, TOKENIZER, None)
  if not with_params:
    return model, None
  return model, random_params(model)


def test_scale_targets_and_inputs_follow_flowar_resizing():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  model, _ = make(with_params=False)
  lat = np.random.default_rng(0).standard_normal((2, G, G, C)).astype(np.float32)
  scales = model.scale_latents(jnp.asarray(lat))
  for s, x in zip(model.scales, scales):  # area downsampling = mean over (G/s)^2 blocks
    np.testing.assert_allclose(x, lat.reshape(2, s, G // s, s, G // s, C).mean((2, 4)), atol=1e-5)
  got = np.asarray(model.teacher_inputs(scales))
  want = []
  for i, s in enumerate(model.scales[1:]):  # torch: bicubic up to the full grid, then area down
    prev = torch.from_numpy(np.asarray(scales[i])).permute(0, 3, 1, 2)
    x = F.interpolate(F.interpolate(prev, (G, G), mode="bicubic"), (s, s), mode="area")
    want.append(x.permute(0, 2, 3, 1).reshape(2, -1, C).numpy())
  np.testing.assert_allclose(got, np.concatenate(want, 1), atol=1e-5)


def test_features_are_causal_over_scales():
  model, params = make()
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.standard_normal((1, 84, C)), jnp.float32)  # 85 tokens minus the start token
  f = jax.jit(lambda x: model.features(params, {"label": jnp.array([1])}, x))
  base = np.asarray(f(inputs))
  level = np.repeat(np.arange(4), [1, 4, 16, 64])
  for tok in (0, 10, 40):  # input row `tok` is sequence position tok + 1
    moved = np.abs(np.asarray(f(inputs.at[:, tok].add(2.0))) - base).max(axis=(0, 2)) > 1e-6
    np.testing.assert_array_equal(moved, level >= level[tok + 1])


@pytest.mark.parametrize("cfg_scale,steps_end", [(1.0, 0), (2.5, 0), (2.5, 1)])
def test_cached_sampler_equals_teacher_forced_recompute(cfg_scale, steps_end):
  model, params = make(steps_end=steps_end)
  label, rng = jnp.array([0, 2]), jax.random.PRNGKey(3)
  opts = loop.options(dict(cfg_scale=cfg_scale, cfg_schedule="linear"), latent.FLOW_OPTIONS)
  seq = jax.jit(lambda p: model.sample_sequence(p, {"label": label}, rng, opts))(params)
  scales = model.per_scale(seq)
  final = model.layout.merge(seq)
  assert final.shape == (2, G, G, C) and np.abs(np.asarray(final)).max() > 0.1
  np.testing.assert_array_equal(final, scales[-1])
  labels = jnp.concatenate([label, jnp.full_like(label, 3)])
  inputs = model.teacher_inputs(scales)
  z = model.features(params, {"label": labels}, jnp.concatenate([inputs, inputs]))  # full pass, no cache
  start = 0
  for k, s in enumerate(model.scales):
    rng, key = jax.random.split(rng)  # the skeleton's key for unit k
    n = len(model.scales)
    steps = 4 if not steps_end else int(np.round(4 + (steps_end - 4) * k / (n - 1)))  # DiSA by hand
    zc, zu = z[:2, start:start + s * s].reshape(-1, 32), z[2:, start:start + s * s].reshape(-1, 32)
    scale = 1 + (cfg_scale - 1) * k / (n - 1)
    z_guided = jnp.concatenate([zc, zu]) if cfg_scale != 1.0 else zc
    want = model.head.sample(params["head"], z_guided, key, steps=steps,
                             guide_scale=scale if cfg_scale != 1.0 else None)
    np.testing.assert_allclose(scales[k].reshape(-1, C), want, atol=3e-5, err_msg=f"scale {s}")
    start += s * s


def test_loss_is_the_flow_loss_over_every_scale_token():
  model, params = make()
  lat = jnp.asarray(np.random.default_rng(1).standard_normal((2, G, G, C)), jnp.float32)
  loss, metrics = model.loss(params, dict(latent=lat, label=jnp.array([0, 1])), jax.random.PRNGKey(0), train=False)
  scales = model.scale_latents(lat)
  z = model.features(params, {"label": jnp.array([0, 1])}, model.teacher_inputs(scales)).reshape(-1, 32)
  target = jnp.concatenate([x.reshape(2, -1, C) for x in scales], 1).reshape(-1, C)
  want = model.head.loss(params["head"], z, target, jax.random.split(jax.random.PRNGKey(0), 3)[2]).mean()
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert set(metrics) == {"flow_loss", "flow_loss_last_scale"}


def test_bad_scales_are_an_error_naming_the_key():
  with pytest.raises(ValueError, match=r"model.scales=\(1, 2, 4\)"):
    make(scales=(1, 2, 4), with_params=False)
