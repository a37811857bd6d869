"""Diffusion head: v-prediction targets and DDIM, checked with the exact posterior predictions of Gaussian data."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from arjax import heads

MEAN, STD = 1.5, 0.4  # data x_0 ~ N(MEAN, STD^2) in every dimension


def exact(kind, x, ab):
  """E[eps | x_t] or E[v | x_t] for Gaussian data under x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps."""
  x0 = MEAN + jnp.sqrt(ab) * STD**2 / (ab * STD**2 + 1 - ab) * (x - jnp.sqrt(ab) * MEAN)
  eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)
  return eps if kind == "eps" else jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * x0


def head(kind):
  return heads.build(2, ml_collections.ConfigDict(dict(kind="diffusion", width=8, depth=1, steps=50,
                                                        train_steps=1000, prediction=kind, clip_x0=10.0)))


@pytest.mark.parametrize("kind", ["eps", "v"])
def test_ddim_with_exact_predictions_reaches_the_data_distribution(kind):
  h = head(kind)
  x_T = jax.random.normal(jax.random.PRNGKey(0), (4000, 2))
  x0 = h.ddim(lambda x, t: exact(kind, x, h.alpha_bar[t]), x_T, 100)
  np.testing.assert_allclose(np.mean(x0, 0), MEAN, atol=0.03)
  np.testing.assert_allclose(np.std(x0, 0), STD, atol=0.03)


def test_v_and_eps_parameterisations_give_one_ddim_path_and_v_target_is_consistent():
  hv, he = head("v"), head("eps")
  x_T = jax.random.normal(jax.random.PRNGKey(1), (64, 2))
  a = hv.ddim(lambda x, t: exact("v", x, hv.alpha_bar[t]), x_T, 20)
  b = he.ddim(lambda x, t: exact("eps", x, he.alpha_bar[t]), x_T, 20)
  np.testing.assert_allclose(a, b, atol=1e-4)
  # x0_eps inverts the v target: v built from (x_0, eps) maps back to them
  ab = jnp.float32(0.3)
  x0, eps = jnp.array([[0.5, -1.0]]), jnp.array([[0.2, 0.7]])
  xt = jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * eps
  got = hv.x0_eps(jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * x0, xt, ab)
  np.testing.assert_allclose(got[0], x0, atol=1e-6)
  np.testing.assert_allclose(got[1], eps, atol=1e-6)


def test_prediction_must_be_eps_or_v():
  with pytest.raises(ValueError, match="prediction"):
    head("x0")
