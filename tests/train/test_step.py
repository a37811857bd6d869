"""The pure train step: gradient accumulation equals the full-batch gradient; EMA and bf16 compute."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from arjax.train.step import TrainState, make_train_step


class LinearRegression:
  """A Trainable whose loss is a per-example mean, so micro-batch averaging is exact."""

  def init(self, rng, batch):
    return dict(w=jax.random.normal(rng, (3, 2)), b=jnp.zeros((2,)))

  def loss(self, params, batch, rng, train=True):
    err = batch["x"] @ params["w"] + params["b"] - batch["y"]
    mse = jnp.mean(jnp.square(err).astype(jnp.float32))
    return mse, dict(mse=mse)


def run(grad_accum, compute_dtype=jnp.float32, steps=3):
  model = LinearRegression()
  rng = np.random.default_rng(0)
  batch = dict(x=jnp.asarray(rng.normal(size=(8, 3)), jnp.float32), y=jnp.asarray(rng.normal(size=(8, 2)), jnp.float32))
  params = model.init(jax.random.PRNGKey(0), batch)
  tx = optax.sgd(0.1)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), ema_params=params,
                     rng=jax.random.PRNGKey(1))
  step = jax.jit(make_train_step(model, tx, lambda s: 0.1, ema_decay=0.5, compute_dtype=compute_dtype,
                                 grad_accum=grad_accum))
  history = []
  for _ in range(steps):
    history.append(state.params)
    state, metrics = step(state, batch)
  return state, metrics, history, batch


def test_grad_accumulation_matches_full_batch_and_sgd_by_hand():
  s1, m1, hist, batch = run(1)
  s4, m4, _, _ = run(4)
  for k in ("w", "b"):
    np.testing.assert_allclose(s1.params[k], s4.params[k], atol=1e-6)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
  # one SGD step by hand (closed-form gradient of the mean squared error)
  p = hist[0]
  err = batch["x"] @ p["w"] + p["b"] - batch["y"]
  grad_w = 2 * batch["x"].T @ err / err.size
  np.testing.assert_allclose(hist[1]["w"], p["w"] - 0.1 * grad_w, atol=1e-6)
  # EMA with decay 0.5 over the three parameter values
  ema = hist[0]["w"]
  for p in hist[1:] + [s1.params]:
    ema = 0.5 * ema + 0.5 * p["w"]
  np.testing.assert_allclose(s1.ema_params["w"], ema, atol=1e-6)
  assert int(s1.step) == 3


def test_bf16_compute_keeps_f32_params():
  s, m, _, _ = run(1, jnp.bfloat16)
  s32, m32, _, _ = run(1)
  assert s.params["w"].dtype == jnp.float32
  np.testing.assert_allclose(m["loss"], m32["loss"], rtol=3e-2)
  assert not np.allclose(s.params["w"], s32.params["w"], atol=1e-7)  # compute really ran in bf16
