"""The one Conditioner: null condition, label dropout rate, CFG doubling, embeddings, clear errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.conditioning import Conditioner


def test_class_null_double_and_drop_rate():
  c = Conditioner("class", num_classes=5, label_drop=0.3)
  cond = {"label": jnp.arange(4000) % 5}
  np.testing.assert_array_equal(c.null(cond)["label"], np.full(4000, 5))
  doubled = c.double({"label": jnp.array([1, 2])})["label"]
  np.testing.assert_array_equal(doubled, [1, 2, 5, 5])
  dropped = np.asarray(c.drop(cond, jax.random.PRNGKey(0))["label"])
  changed = dropped != np.asarray(cond["label"])
  assert set(np.unique(dropped[changed])) == {5}
  # binomial(4000, 0.3): mean 1200, sd 29
  assert abs(changed.sum() - 1200) < 5 * 29
  assert Conditioner("class", 5, 0.0).drop(cond, jax.random.PRNGKey(0)) is cond


def test_caption_null_is_all_zero_and_embeds_to_the_learned_null_vector():
  c = Conditioner("caption", num_classes=1, label_drop=1 - 1e-9)
  cap = jnp.zeros((3, 64), jnp.uint8).at[0, :3].set(jnp.array([97, 98, 99], jnp.uint8)).at[1, :2].set(
      jnp.array([97, 98], jnp.uint8))
  cond = {"caption": cap}
  assert not np.asarray(c.drop(cond, jax.random.PRNGKey(0))["caption"]).any()
  emb = c.embedder(16)
  params = emb.init(jax.random.PRNGKey(0), cond)
  out = np.asarray(emb.apply(params, cond))
  null = np.asarray(params["params"]["null"].value)
  np.testing.assert_allclose(out[2], null)  # the empty caption
  assert np.abs(out[0] - out[1]).max() > 1e-4 and np.abs(out[0] - null).max() > 1e-4
  # padding bytes do not change the embedding of a caption
  longer = {"caption": jnp.zeros((1, 64), jnp.uint8).at[0, :3].set(jnp.array([97, 98, 99], jnp.uint8))}
  np.testing.assert_allclose(np.asarray(emb.apply(params, longer))[0], out[0], rtol=1e-5, atol=1e-7)


def test_class_embedding_is_a_table_row_and_null_is_the_last():
  c = Conditioner("class", num_classes=3)
  emb = c.embedder(8)
  params = emb.init(jax.random.PRNGKey(0), c.example(2))
  table = np.asarray(params["params"]["class_embed"]["embedding"].value)
  assert table.shape == (4, 8)
  np.testing.assert_allclose(emb.apply(params, {"label": jnp.array([2, 3])}), table[[2, 3]])


def test_errors_name_what_is_expected():
  with pytest.raises(ValueError, match="model.cond must be one of"):
    Conditioner("image")
  with pytest.raises(ValueError, match="cond=\\{'label'"):
    Conditioner("class", 3).get(jnp.array([0, 1]))
  with pytest.raises(ValueError, match="cond\\['caption'\\] must have 2 dims"):
    Conditioner("caption", 1).get({"caption": jnp.zeros((3,), jnp.uint8)})
