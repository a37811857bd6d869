"""MAR: mask-ratio distribution, the cosine unmasking schedule, MAE-style masking of unknown
tokens, one head sample per token in order."""
import math
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from arjax.paradigms import masked_ar
from arjax.sampling import loop

TOKENIZER = types.SimpleNamespace(grid=(4, 4), latent_dim=3)


def make(kind="flow", pos="learned"):
  block = dict(depth=1, heads=2, kv_heads=2, pos=pos, impl="xla")
  cfg = ml_collections.ConfigDict(dict(
      name="masked_ar", num_classes=3, width=32, label_drop=0.1, buffer=2, num_iter=4,
      encoder=block, decoder=dict(block),
      head=dict(kind=kind, width=32, depth=1, steps=3, steps_end=0, solver="euler", batch_mul=1)))
  model = masked_ar.MaskedAR(cfg, TOKENIZER, None)
  params = nn.meta.unbox(jax.jit(lambda r: model.init(r, None))(jax.random.PRNGKey(0)))
  params = jax.tree.map(lambda p: p + 0.2 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
  return model, params


def test_mask_ratio_is_the_truncated_normal():
  r = np.asarray(masked_ar.mask_ratio(jax.random.PRNGKey(0), (20000,)))
  assert r.min() >= 0.7 and r.max() <= 1.0
  ref = stats.truncnorm((0.7 - 1) / 0.25, 0.0, loc=1.0, scale=0.25)
  assert stats.kstest(r, ref.cdf).pvalue > 1e-3


def test_cosine_mask_ratio_is_maskgits_and_covers_every_sampling_round():
  """'cosine' ratios are cos(pi/2 u), u ~ U(0, 1); unlike MAR's [0.7, 1] they put training mass at the unknown
  fraction of every sampling round (issue 18: MAR's rounds with > 30% known were never trained)."""
  r = np.asarray(masked_ar.mask_ratio(jax.random.PRNGKey(0), (20000,), "cosine"))
  assert stats.kstest(r, lambda x: 1 - 2 / np.pi * np.arccos(np.clip(x, -1, 1))).pvalue > 1e-3
  mar = np.asarray(masked_ar.mask_ratio(jax.random.PRNGKey(0), (20000,)))
  n = 64
  unknown_before = [n] + masked_ar.unmask_schedule(n, 16)[:-1]  # what each round's forward pass sees
  near = lambda ratios, u: np.mean(np.abs(ratios - u / n) < 0.05)
  assert min(near(r, u) for u in unknown_before) > 0.01
  assert sum(near(mar, u) < 1e-3 for u in unknown_before) == 7  # 7 of 16 rounds (40 of 64 tokens): no mass


@pytest.mark.parametrize("n,iters", [(16, 4), (64, 8), (16, 16), (10, 1)])
def test_unmask_schedule_is_marss_cosine(n, iters):
  got = masked_ar.unmask_schedule(n, iters)
  unknown, want = n, []
  for s in range(iters):
    left = 0 if s == iters - 1 else max(1, min(unknown - 1, math.floor(n * math.cos(math.pi / 2 * (s + 1) / iters))))
    want.append(left)
    unknown = left
  assert got == want and got[-1] == 0 and all(a > b for a, b in zip([n] + got, got))


@pytest.mark.parametrize("pos", ["learned", "rope2d"])
def test_unknown_token_values_are_invisible(pos):
  model, params = make(pos=pos)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 16, 3)), jnp.float32)
  known = jnp.asarray(rng.uniform(size=(2, 16)) < 0.5)
  f = jax.jit(lambda x: model.net.apply({"params": params["net"]}, x, known, {"label": jnp.array([0, 1])}))
  base = f(x)
  assert np.abs(np.asarray(f(jnp.where(known[..., None], x, 5.0)) - base)).max() < 1e-5
  assert np.abs(np.asarray(f(jnp.where(known[..., None], x + 1.0, x)) - base)).max() > 1e-3


def test_rope2d_rotates_by_grid_position_and_must_be_in_both_transformers():
  """rope2d: a known token's effect on another depends on their 2D offset; the buffer sits at (-1, -1)."""
  model, params = make(pos="rope2d")
  np.testing.assert_array_equal(model.net.positions[:2], [[-1, -1], [-1, -1]])
  np.testing.assert_array_equal(model.net.positions[2:], [[r, c] for r in range(4) for c in range(4)])
  assert "pos_embed" not in str(jax.tree_util.tree_structure(params["net"]))
  block = dict(depth=1, heads=2, kv_heads=2, impl="xla")
  cfg = ml_collections.ConfigDict(dict(
      name="masked_ar", num_classes=3, width=32, label_drop=0.1, buffer=2, num_iter=4,
      encoder=dict(block, pos="rope2d"), decoder=dict(block, pos="learned"),
      head=dict(kind="flow", width=32, depth=1, steps=3, steps_end=0, solver="euler", batch_mul=1)))
  with pytest.raises(ValueError, match="rope2d in one needs it in both"):
    masked_ar.MaskedAR(cfg, TOKENIZER, None)


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
def test_each_token_is_drawn_once_with_head_noise_and_cfg(kind):
  model, params = make(kind)
  opts = loop.options(dict(cfg_scale=3.0, cfg_schedule="linear", steps=4), masked_ar.OPTIONS)
  lat = jax.jit(lambda p: model.sample_latents(p, {"label": jnp.array([0, 2])}, jax.random.PRNGKey(3), opts))(params)
  lat = np.asarray(lat)
  assert lat.shape == (2, 4, 4, 3) and np.isfinite(lat).all()
  assert (np.abs(lat).sum(-1) > 0).all()  # every position was filled
  assert np.abs(lat[0] - lat[1]).max() > 1e-3


def sample_by_hand(model, params, label_B, rng, cfg_scale, steps):
  """MAR's loop written out: round s reveals the next tokens of a random order, guided (linear in the fraction of
  tokens known after the round) from a full pass over [cond ; null]."""
  b, n = label_B.shape[0], 16
  k_order, rng = jax.random.split(rng)
  order = jnp.argsort(jax.random.uniform(k_order, (b, n)), axis=-1)
  cond = {"label": jnp.concatenate([label_B, jnp.full_like(label_B, 3)])}
  tokens, known, prev = jnp.zeros((b, n, 3)), jnp.zeros((b, n), bool), 0
  for left in masked_ar.unmask_schedule(n, model.cfg.num_iter):
    rng, key = jax.random.split(rng)  # the sampler skeleton's key for this round
    z = model.net.apply({"params": params["net"]}, jnp.concatenate([tokens] * 2), jnp.concatenate([known] * 2), cond)
    idx = order[:, prev:n - left]
    pick = lambda zz: jnp.take_along_axis(zz, idx[..., None], axis=1).reshape(-1, zz.shape[-1])
    scale = 1 + (cfg_scale - 1) * (n - left) / n
    new = model.head.sample(params["head"], jnp.concatenate([pick(z[:b]), pick(z[b:])]), key, guide_scale=scale,
                            steps=steps)
    tokens = tokens.at[jnp.arange(b)[:, None], idx].set(new.reshape(b, -1, 3))
    known = known.at[jnp.arange(b)[:, None], idx].set(True)
    prev = n - left
  return tokens.reshape(b, 4, 4, 3)


@pytest.mark.parametrize("num_iter", [4, 16])
def test_sampler_skeleton_equals_mars_loop_by_hand(num_iter):
  model, params = make("flow")
  model.cfg.num_iter = num_iter  # 16: one token per round, units of equal size run in a while loop
  label, rng = jnp.array([1, 2]), jax.random.PRNGKey(4)
  opts = loop.options(dict(cfg_scale=2.5, cfg_schedule="linear", steps=3), masked_ar.OPTIONS)
  got = jax.jit(lambda p: model.sample_latents(p, {"label": label}, rng, opts))(params)
  want = jax.jit(lambda p: sample_by_hand(model, p, label, rng, 2.5, 3))(params)
  assert np.abs(np.asarray(want)).max() > 0.1
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_loss_counts_only_unknown_tokens():
  model, params = make()
  with pytest.raises(ValueError, match="model.mask_ratio"):
    masked_ar.MaskedAR(ml_collections.ConfigDict(dict(model.cfg, mask_ratio="uniform")), TOKENIZER, None)
  batch = dict(latent=jnp.ones((4, 4, 4, 3)), label=jnp.array([0, 1, 2, 0]))
  loss, metrics = model.loss(params, batch, jax.random.PRNGKey(0))
  assert np.isfinite(loss) and 0.7 <= float(metrics["mask_ratio"]) <= 1.0
  with pytest.raises(ValueError, match="unknown sampling option"):
    model.sample(params, {"label": jnp.array([0])}, jax.random.PRNGKey(0), num_iters=3)
