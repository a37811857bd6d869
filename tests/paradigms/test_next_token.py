"""Next-token paradigm: the KV-cached sampler skeleton equals greedy decoding by full recomputation."""
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from arjax.paradigms.next_token import NextToken
from arjax.sampling import loop

TOKENIZER = types.SimpleNamespace(grid=(3, 4), vocab_size=11)


def make(pos, cond="class", label_drop=0.1):
  cfg = ml_collections.ConfigDict(dict(
      name="next_token", num_classes=3, cond=cond, width=32, label_drop=label_drop,
      transformer=dict(depth=2, heads=2, kv_heads=1, pos=pos, qk_norm=True, impl="xla")))
  model = NextToken(cfg, TOKENIZER, None)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), None))
  # random (non-zero) head so that logits depend on the context
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
  return model, params


def greedy_by_recompute(model, params, cond, cfg_scale):
  n, b = model.num_tokens, model.conditioner.batch_size(cond)
  tokens = np.zeros((b, n), np.int32)
  for i in range(n):
    logits = model.logits(params, cond, jnp.asarray(tokens))[:, i]
    if cfg_scale != 1.0:
      uncond = model.logits(params, model.conditioner.null(cond), jnp.asarray(tokens))[:, i]
      logits = uncond + cfg_scale * (logits - uncond)
    tokens[:, i] = np.asarray(logits.argmax(-1))
  return tokens


def sample_tokens(model, params, cond, rng, **opts):
  return jax.jit(lambda p, c: model.sample_tokens(p, c, rng, loop.options(opts)))(params, cond)


@pytest.mark.parametrize("pos,cfg_scale,cond,chunked", [("rope2d", 1.0, "class", False), ("rope2d", 3.0, "class", True),
                                                        ("learned", 1.0, "class", True),
                                                        ("rope1d", 2.0, "caption", True)])
def test_cached_sampler_equals_full_recompute(monkeypatch, pos, cfg_scale, cond, chunked):
  """chunked: the decode loop runs in loop.CHUNKS loops over caches cut to the slots written so far."""
  monkeypatch.setattr(loop, "CHUNK_MIN_SLOTS", 0 if chunked else 10 ** 9)
  model, params = make(pos, cond)
  if cond == "class":
    c = {"label": jnp.array([0, 2, 1])}
  else:
    c = {"caption": jnp.zeros((3, 64), jnp.uint8).at[0, :4].set(jnp.array([97, 98, 99, 100], jnp.uint8)).at[1, :2].set(65)}
  got = sample_tokens(model, params, c, jax.random.PRNGKey(0), temperature=0.0, cfg_scale=cfg_scale)
  np.testing.assert_array_equal(np.asarray(got), greedy_by_recompute(model, params, c, cfg_scale))
  # top_k=1 at temperature 1 is also greedy
  top1 = sample_tokens(model, params, c, jax.random.PRNGKey(5), top_k=1, cfg_scale=cfg_scale)
  np.testing.assert_array_equal(np.asarray(top1), np.asarray(got))


def test_sample_rejects_unknown_option_and_missing_condition():
  model, params = make("rope2d")
  with pytest.raises(ValueError, match="unknown sampling option"):
    model.sample(params, {"label": jnp.array([0])}, jax.random.PRNGKey(0), cfg_scal=2.0)
  with pytest.raises(ValueError, match="cond=\\{'label'"):
    model.sample(params, {"caption": jnp.zeros((1, 64), jnp.uint8)}, jax.random.PRNGKey(0))


def test_loss_is_mean_token_nll_and_label_drop_changes_only_conditioning():
  model, params = make("rope2d")
  tokens = jax.random.randint(jax.random.PRNGKey(2), (4, 12), 0, 11)
  batch = dict(tokens=tokens, label=jnp.array([0, 1, 2, 0]))
  loss, metrics = model.loss(params, batch, jax.random.PRNGKey(0), train=False)
  np.testing.assert_allclose(loss, model.nll(params, batch).sum() / tokens.size, rtol=1e-6)
  # with all labels dropped the loss equals the loss of null-class inputs
  dropping, _ = make("rope2d", label_drop=0.999999)
  dropped, _ = dropping.loss(params, batch, jax.random.PRNGKey(0), train=True)
  null_batch = dict(batch, label=jnp.full((4,), 3))
  np.testing.assert_allclose(dropped, model.nll(params, null_batch).sum() / tokens.size, rtol=1e-6)
