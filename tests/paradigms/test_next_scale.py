"""Next-scale (VAR) paradigm: the scale-by-scale KV-cached pass equals the teacher-forced block-causal
pass on the same tokens; sampling shapes, CFG and the loss."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from arjax.paradigms import next_scale
from arjax.paradigms.next_scale import NextScale
from arjax.sampling import loop
from arjax.tokenizers.multiscale_vq import MultiScaleVQ

jax.config.update("jax_default_matmul_precision", "highest")

TOK_CFG = dict(name="msvq", ch=8, ch_mult=(1, 1, 1), num_res_blocks=1, z_channels=4, code_dim=4, vocab_size=16,
               patch_nums=(1, 2, 3, 4), image_size=16, attn=False, mid_attn=True, norm_groups=4)


@functools.lru_cache(maxsize=None)
def make(drop_path=0.0):
  tok = MultiScaleVQ(TOK_CFG)
  tok_params = nn.meta.unbox(jax.jit(tok.init)(jax.random.PRNGKey(0), dict(image=jnp.zeros((1, 16, 16, 3)))))
  cfg = ml_collections.ConfigDict(dict(name="next_scale", num_classes=3, width=32, label_drop=0.1,
                                       transformer=dict(depth=2, heads=2, mlp_ratio=2.0, drop_path=drop_path,
                                                        impl="xla")))
  model = NextScale(cfg, tok, tok_params)
  # random (non-zero) AdaLN / head so that logits depend on class and context
  return model, jax.jit(lambda: perturb(nn.meta.unbox(model.init(jax.random.PRNGKey(1), None))))()


def perturb(params):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  return jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def test_cached_scale_by_scale_equals_teacher_forced():
  model, params = make()
  images = jax.random.uniform(jax.random.PRNGKey(3), (3, 16, 16, 3), minval=-1, maxval=1)
  batch = jax.jit(model.preprocess)(dict(image=images, label=jnp.array([0, 2, 3])))  # 3 = null class
  cond = {"label": batch["label"]}
  full = jax.jit(model.logits)(params, cond, batch["inputs"])
  assert full.shape == (3, model.num_tokens, 16)
  cache = model.tcfg.init_cache(3, model.num_tokens)

  @jax.jit
  def scale_by_scale(params, cache):
    got = []
    for si, (start, size) in enumerate(zip(model.starts, model.sizes)):
      feats = None if si == 0 else batch["inputs"][:, start - model.sizes[0]:start - model.sizes[0] + size]
      logits, cache = model.net.apply({"params": params}, cond, feats, start, cache=cache)
      got.append(logits)
    return jnp.concatenate(got, axis=1)

  got = scale_by_scale(params, cache)
  np.testing.assert_allclose(np.asarray(got), np.asarray(full), atol=1e-5)
  # the block-causal mask really matters: a full-attention pass differs on coarse scales
  assert float(jnp.abs(full[:, :5] - full[:, :5].mean()).max()) > 1e-3


def test_sampler_matches_teacher_forced_argmax_and_cfg():
  """Greedy sampling = at every scale the argmax of the teacher-forced pass on the sampled tokens."""
  model, params = make()
  labels = jnp.array([0, 1])
  logits = jax.jit(model.logits)
  for cfg_scale in (1.0, 3.0):
    opts = loop.options(dict(temperature=0.0, cfg_scale=cfg_scale, cfg_schedule="linear"), next_scale.SAMPLE_OPTIONS)
    flat, f_hat = jax.jit(lambda p: model.sample_tokens(p, {"label": labels}, jax.random.PRNGKey(0), opts))(params)
    tokens = model.token_maps(flat)
    inputs = jax.jit(model.tokenizer.teacher_inputs)(model.tokenizer_params, tokens)
    cond = logits(params, {"label": labels}, inputs)
    uncond = logits(params, {"label": jnp.full_like(labels, 3)}, inputs)
    for si, (start, size) in enumerate(zip(model.starts, model.sizes)):
      scale = 1 + (cfg_scale - 1) * si / (len(model.sizes) - 1)
      want = (uncond + scale * (cond - uncond))[:, start:start + size].argmax(-1)
      np.testing.assert_array_equal(np.asarray(flat[:, start:start + size]), np.asarray(want))
    np.testing.assert_allclose(np.asarray(f_hat), np.asarray(jax.jit(model.tokenizer.tokens_to_fhat)(
        model.tokenizer_params, tokens)), atol=1e-5)
  images = model.sample(params, {"label": labels}, jax.random.PRNGKey(1), top_k=4, top_p=0.9, cfg_scale=2.0, smooth=True)
  assert images.shape == (2, 16, 16, 3) and bool(jnp.all(jnp.abs(images) <= 1))


def test_loss_label_drop_and_drop_path():
  model, params = make(drop_path=0.5)
  images = jax.random.uniform(jax.random.PRNGKey(3), (4, 16, 16, 3), minval=-1, maxval=1)
  batch = jax.jit(model.preprocess)(dict(image=images, label=jnp.array([0, 1, 2, 0])))
  loss_fn = jax.jit(model.loss, static_argnames="train")
  loss, metrics = loss_fn(params, batch, jax.random.PRNGKey(0), train=False)
  logits = jax.jit(model.logits)(params, {"label": batch["label"]}, batch["inputs"])
  want = -np.mean(np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(batch["tokens"])[..., None], -1))
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  # training-mode drop-path changes the loss and depends on the rng; eval mode does not
  a = loss_fn(params, batch, jax.random.PRNGKey(0), train=True)[0]
  b = loss_fn(params, batch, jax.random.PRNGKey(7), train=True)[0]
  assert abs(float(a) - float(b)) > 1e-6
  grads = jax.jit(jax.grad(lambda p: model.loss(p, batch, jax.random.PRNGKey(0))[0]))(params)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
