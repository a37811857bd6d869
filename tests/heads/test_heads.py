"""Continuous heads: solvers on an analytic velocity, the flow loss by hand, and trained flow /
diffusion heads whose samples match a conditional 2-D Gaussian mixture."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from arjax import heads
from arjax.heads.diffusion import cosine_alpha_bar
from arjax.sampling import ode

# class 0: two isotropic modes at (+-2, 0), std 0.5; class 1: one mode at (1, -1), std 0.7
MIXTURES = {0: (np.array([[-2.0, 0.0], [2.0, 0.0]]), 0.5), 1: (np.array([[1.0, -1.0]]), 0.7)}


def moments(cls):
  means, s = MIXTURES[cls]
  mean = means.mean(0)
  cov = np.cov(means.T, bias=True).reshape(2, 2) + s * s * np.eye(2) if len(means) > 1 else s * s * np.eye(2)
  return mean, cov


def draw(rng, cls, n):
  means, s = MIXTURES[cls]
  idx = rng.integers(0, len(means), n)
  return means[idx] + s * rng.standard_normal((n, 2))


def analytic_velocity(cls):
  """E[x - eps | x_t] for the mixture under x_t = t x + (1 - t) eps (exact)."""
  means, s = MIXTURES[cls]
  m_K2 = jnp.asarray(means, jnp.float32)

  def v(x_N2, t):
    var = t * t * s * s + (1 - t) ** 2
    d = x_N2[:, None, :] - t * m_K2[None]
    logw = -0.5 * jnp.sum(d * d, -1) / var
    w = jax.nn.softmax(logw, axis=-1)
    per = m_K2[None] + (t * s * s - (1 - t)) / var * d
    return jnp.sum(w[..., None] * per, axis=1)
  return v


def check_matches(x, cls, mean_tol, cov_tol):
  mean, cov = moments(cls)
  np.testing.assert_allclose(x.mean(0), mean, atol=mean_tol)
  np.testing.assert_allclose(np.cov(x.T), cov, atol=cov_tol)
  if cls == 0:  # bimodal: half the mass on each side, little in between
    assert abs((x[:, 0] > 0).mean() - 0.5) < 0.06
    assert (np.abs(x[:, 0]) < 0.5).mean() < 0.1


@pytest.mark.parametrize("solver,steps", [("euler", 200), ("heun", 40), ("euler_maruyama", 400)])
def test_solvers_on_analytic_velocity(solver, steps):
  x0 = jax.random.normal(jax.random.PRNGKey(0), (20000, 2))
  x = jax.jit(lambda x0: ode.integrate(analytic_velocity(0), x0, steps, solver=solver,
                                       rng=jax.random.PRNGKey(1)))(x0)
  check_matches(np.asarray(x), 0, mean_tol=0.06, cov_tol=0.12)


def test_heun_beats_euler_and_steps_can_be_traced():
  v = analytic_velocity(1)
  x0 = jax.random.normal(jax.random.PRNGKey(0), (512, 2))
  ref = ode.integrate(v, x0, 2000, solver="heun")
  err = lambda s: float(jnp.abs(ode.integrate(v, x0, 8, solver=s) - ref).max())
  assert err("heun") < 0.2 * err("euler")
  traced = jax.jit(lambda n: ode.integrate(v, x0, n, solver="euler"))(jnp.int32(8))
  np.testing.assert_allclose(traced, ode.integrate(v, x0, 8, solver="euler"), atol=1e-6)
  with pytest.raises(ValueError, match="solver"):
    ode.integrate(v, x0, 8, solver="rk4")


def head_cfg(kind, **kw):
  return ml_collections.ConfigDict(dict(kind=kind, width=64, depth=2, steps=kw.pop("steps", 50), steps_end=0,
                                        solver=kw.pop("solver", "euler"), batch_mul=1, **kw))


def test_flow_loss_equals_hand_computed_value():
  head = heads.build(3, head_cfg("flow"))
  rng = np.random.default_rng(0)
  z, x, eps = (rng.standard_normal((5, d)).astype(np.float32) for d in (4, 3, 3))
  t = np.array([0.0, 0.25, 0.5, 0.9, 1.0], np.float32)
  params = head.init(jax.random.PRNGKey(0), jnp.asarray(z))
  # zero-initialised output layer: v = 0, so the loss is mean((x - eps)^2) per row
  np.testing.assert_allclose(head.loss_at(params, z, x, eps, t), ((x - eps) ** 2).mean(-1), rtol=1e-6)
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(3), p.shape), params)
  xt = t[:, None] * x + (1 - t[:, None]) * eps
  v = np.asarray(head.velocity(params, xt, t, z))
  assert np.abs(v).max() > 1e-3
  np.testing.assert_allclose(head.loss_at(params, z, x, eps, t), ((v - (x - eps)) ** 2).mean(-1), rtol=1e-5)


def test_diffusion_schedule_and_head_errors():
  ab = cosine_alpha_bar(1000)
  assert ab.shape == (1000,) and np.all(np.diff(ab) < 0) and 0.99 < ab[0] < 1 and ab[-1] < 1e-4
  with pytest.raises(ValueError, match="model.head.kind"):
    heads.build(2, head_cfg("gmm"))
  with pytest.raises(ValueError, match="unknown key"):
    heads.build(2, head_cfg("flow", widht=3))


def train_head(head, steps=2500, batch=512):
  """Fits a head to the class-conditional mixture; z is a one-hot class feature."""
  rng = np.random.default_rng(0)
  params = head.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))
  tx = optax.adam(optax.cosine_decay_schedule(3e-3, steps, 0.05))
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, x, cls, key):
    loss_fn = lambda p: head.loss(p, jax.nn.one_hot(cls, 2), x, key).mean()
    loss, g = jax.value_and_grad(loss_fn)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  for i in range(steps):
    cls = rng.integers(0, 2, batch)
    x = np.where(cls[:, None] == 0, draw(rng, 0, batch), draw(rng, 1, batch)).astype(np.float32)
    params, opt, _ = step(params, opt, x, cls, jax.random.PRNGKey(i))
  return params


@functools.lru_cache(maxsize=None)
def trained(kind):
  head = heads.build(2, head_cfg(kind, **({"train_steps": 1000} if kind == "diffusion" else {})))
  return head, train_head(head)


@pytest.mark.parametrize("kind,solver,steps", [("flow", "euler", 50), ("flow", "heun", 25),
                                               ("flow", "euler_maruyama", 100), ("diffusion", None, 100)])
def test_trained_head_matches_target(kind, solver, steps):
  head, params = trained(kind)
  for cls in (0, 1):
    z = jax.nn.one_hot(jnp.full((8000,), cls), 2)
    x = jax.jit(lambda p, z: head.sample(p, z, jax.random.PRNGKey(7), steps=steps, solver=solver))(params, z)
    check_matches(np.asarray(x), cls, mean_tol=0.12, cov_tol=0.3)


def test_guide_scale_one_equals_unguided_and_temperature_zero_flow_is_deterministic():
  head, params = trained("flow")
  z = jax.nn.one_hot(jnp.zeros((64,), jnp.int32), 2)
  plain = head.sample(params, z, jax.random.PRNGKey(1), steps=10)
  guided = head.sample(params, jnp.concatenate([z, jnp.zeros_like(z)]), jax.random.PRNGKey(1), steps=10,
                       guide_scale=1.0)
  np.testing.assert_allclose(plain, guided, atol=1e-5)
  cold = head.sample(params, z, jax.random.PRNGKey(1), steps=10, temperature=0.0)
  np.testing.assert_allclose(cold, jnp.broadcast_to(cold[:1], cold.shape), atol=1e-5)


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
def test_guidance_combines_the_cond_and_uncond_halves_at_every_step(kind):
  """guide_scale s on [z_c ; z_u]: s = 1 samples from z_c, s = 0 from z_u, any s equals guiding by hand."""
  head = heads.build(2, head_cfg(kind, steps=6, **({"train_steps": 100} if kind == "diffusion" else {})))
  params = head.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
  z_c, z_u = (jax.random.normal(jax.random.PRNGKey(k), (16, 3)) for k in (2, 3))
  z2 = jnp.concatenate([z_c, z_u])
  draw = lambda z, **kw: np.asarray(head.sample(params, z, jax.random.PRNGKey(4), **kw))
  np.testing.assert_allclose(draw(z2, guide_scale=1.0), draw(z_c), atol=1e-5)
  np.testing.assert_allclose(draw(z2, guide_scale=0.0), draw(z_u), atol=1e-5)
  guided = draw(z2, guide_scale=2.5)
  assert np.abs(guided - draw(z_c)).max() > 1e-3
  if kind == "flow":  # by hand: every Euler step moves along v_u + 2.5 (v_c - v_u)
    k0, k1 = jax.random.split(jax.random.PRNGKey(4))
    v = lambda z, x, t: head.velocity(params, x, jnp.full((16,), t), z)
    v_fn = lambda x, t: v(z_u, x, t) + 2.5 * (v(z_c, x, t) - v(z_u, x, t))
    np.testing.assert_allclose(guided, ode.integrate(v_fn, jax.random.normal(k0, (16, 2)), 6, rng=k1), atol=1e-5)
