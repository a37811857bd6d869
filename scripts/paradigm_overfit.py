"""Synthetic overfit + teacher-forced diagnostics for the continuous paradigms (issue 18: diagnose before tuning).

  python scripts/paradigm_overfit.py mar_flow,mar_flow_cos,acdit,xar_cell,flowar --steps 400

Data: latents on a 4x4 grid with 4 channels; 4 classes with 2 random N(0, 1) patterns each, so a sample is fully
determined by its class and its first AR unit. Each named model (width 64, depth 2) is trained from scratch
(Adam 1e-3, batch 64), then
  free-running: the paradigm's own sampler (no CFG); 'exact' = samples within 0.3 rms of one of their class's
    patterns, 'token-ok' = tokens within 0.3 rms of their class's patterns at that position;
  teacher-forced: ground-truth context, one unit generated from noise; its token rms error (MAR: a random 20 / 50 /
    80% of the tokens known and the rest drawn in one pass; ACDiT / xAR: unit by unit over the training layout with
    the true units before it clean; FlowAR: every scale from teacher-forced features).
A correct paradigm's teacher-forced error falls as context grows. Names: mar_flow, mar_ddpm (+ '_cos' for
model.mask_ratio='cosine'), acdit, xar_<entity> (token, cell, subsample, scale, image), flowar.
"""
from __future__ import annotations

import argparse
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from arjax.paradigms import block_diffusion, latent, masked_ar, next_x, scale_flow
from arjax.sampling import loop, ode

G, C, K, P = 4, 4, 4, 2  # grid side, channels, classes, patterns per class
TOKENIZER = types.SimpleNamespace(grid=(G, G), latent_dim=C)
PATTERNS = np.random.default_rng(0).standard_normal((K, P, G, G, C)).astype(np.float32)
TRANSFORMER = dict(depth=2, heads=4, kv_heads=4, qk_norm=True, impl="xla")
FLOW = dict(steps=20, steps_end=0, solver="euler", sde_scale=1.0)
FLOW_HEAD = dict(kind="flow", width=64, depth=2, batch_mul=2, **FLOW)


def build(name: str):
  """The paradigm named `name` over TOKENIZER."""
  base = dict(num_classes=K, width=64, label_drop=0.1)
  if name.startswith("mar"):
    block = dict(depth=2, heads=4, kv_heads=4, pos="learned", impl="xla", mlp="gelu", norm="layer")
    head = dict(FLOW_HEAD, kind="diffusion", steps=50, train_steps=1000) if "ddpm" in name else FLOW_HEAD
    cfg = dict(base, name="masked_ar", buffer=2, num_iter=8, encoder=block, decoder=dict(block), head=head,
               mask_ratio="cosine" if name.endswith("_cos") else "mar")
    return masked_ar.MaskedAR(ml_collections.ConfigDict(cfg), TOKENIZER, None)
  if name == "acdit":
    cfg = dict(base, name="block_diffusion", block_size=G, flow=FLOW, transformer=dict(TRANSFORMER, pos="rope2d"))
    return block_diffusion.BlockDiffusion(ml_collections.ConfigDict(cfg), TOKENIZER, None)
  if name.startswith("xar_"):
    cfg = dict(base, name="next_x", entity=name[4:], entity_size=2, scales=(1, 2, 4), flow=FLOW,
               transformer=dict(TRANSFORMER, pos="rope2d"))
    return next_x.NextX(ml_collections.ConfigDict(cfg), TOKENIZER, None)
  if name == "flowar":
    cfg = dict(base, name="scale_flow", scales=(1, 2, 4), transformer=dict(TRANSFORMER, pos="learned"), head=FLOW_HEAD)
    return scale_flow.ScaleFlow(ml_collections.ConfigDict(cfg), TOKENIZER, None)
  raise ValueError(f"unknown model name {name!r} (mar_flow, mar_ddpm[_cos], acdit, xar_<entity>, flowar)")


def train(model, steps: int, log_every: int = 100):
  """(params, mean loss of the last 20 steps) after `steps` Adam steps on fresh batches of the synthetic data."""
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), None))
  tx = optax.adam(1e-3)

  @jax.jit
  def step(params, opt, key):
    k_label, k_pattern, k_loss = jax.random.split(key, 3)
    label = jax.random.randint(k_label, (64,), 0, K)
    batch = dict(latent=jnp.asarray(PATTERNS)[label, jax.random.randint(k_pattern, (64,), 0, P)], label=label)
    (loss, _), grads = jax.value_and_grad(lambda p: model.loss(p, batch, k_loss), has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  opt, losses, t0 = tx.init(params), [], time.time()
  for i in range(steps):
    params, opt, loss = step(params, opt, jax.random.PRNGKey(i + 1))
    losses.append(float(loss))
    if (i + 1) % log_every == 0:
      print(f"  step {i + 1}: loss {np.mean(losses[-log_every:]):.4f} ({time.time() - t0:.0f} s)", flush=True)
  return params, float(np.mean(losses[-20:]))


def free_running(name, model, params, per_class: int = 32) -> dict:
  label = jnp.repeat(jnp.arange(K), per_class)
  extra = masked_ar.OPTIONS if name.startswith("mar") else latent.FLOW_OPTIONS
  lat = np.asarray(jax.jit(lambda p: model.sample_latents(p, {"label": label}, jax.random.PRNGKey(5),
                                                          loop.options({}, extra)))(params))
  dist = np.sqrt(((lat[:, None, None] - PATTERNS[None]) ** 2).mean((-1, -2, -3))).reshape(len(lat), -1)
  exact = (dist.argmin(-1) // P == np.asarray(label)) & (dist.min(-1) < 0.3)
  token = np.sqrt(((lat[:, None] - PATTERNS[np.asarray(label)]) ** 2).mean(-1)).min(1)
  return dict(exact=float(exact.mean()), token_ok=float((token < 0.3).mean()))


def teacher_forced(name, model, params, rng=jax.random.PRNGKey(0)) -> dict:
  """Token rms error of units generated from ground-truth context (see the module docstring)."""
  label = jnp.repeat(jnp.arange(K), 16)
  truth = jnp.asarray(PATTERNS)[label, jnp.arange(len(label)) % P]  # [B, G, G, C]
  b, cond = len(label), {"label": label}
  err = lambda x, y: jnp.sqrt(jnp.mean(jnp.square(x - y), -1))
  if name.startswith("mar"):
    out, x = {}, truth.reshape(b, G * G, C)
    for frac in (0.2, 0.5, 0.8):
      known = jax.random.uniform(rng, (b, G * G)) < frac
      z = model.net.apply({"params": params["net"]}, x, known, cond)
      drawn = model.head.sample(params["head"], z.reshape(b * G * G, -1), jax.random.fold_in(rng, 1))
      out[f"{frac:.0%} known"] = float(err(drawn.reshape(x.shape), x)[~known].mean())
    return out
  if name == "flowar":
    target = model.layout.split(truth)
    z = model.features(params, cond, model.teacher_inputs(model.per_scale(target)))
    drawn = model.head.sample(params["head"], z.reshape(-1, z.shape[-1]), rng).reshape(target.shape)
    e = err(drawn, target)
    return {f"scale {s}": float(e[:, t:t + s * s].mean()) for s, t in zip(model.scales, model.starts)}
  seq, out = model.layout.split(truth), {}
  n = seq.shape[1]
  for k, (start, size) in enumerate(zip(model.layout.starts, model.layout.sizes)):
    def v_fn(x, tau, start=start, size=size):
      noised = seq.at[:, start:start + size].set(x)
      if name == "acdit":  # [clean ; noised] under skip_causal: the clean copies of later units are invisible
        inputs = jnp.concatenate([seq, noised], 1)
        t = jnp.concatenate([jnp.ones((b, n)), jnp.full((b, n), tau)], 1)
        clean = jnp.concatenate([jnp.ones((b, n), bool), jnp.zeros((b, n), bool)], 1)
        positions, offset = np.concatenate([model.positions] * 2), n
      else:  # xAR: context clean at t = 1 as in sampling; later entities are invisible under the block-causal mask
        inputs, t = noised, jnp.ones((b, n)).at[:, start:start + size].set(tau)
        clean, positions, offset = jnp.zeros((b, n), bool), model.positions, 0
      v = model.net.apply({"params": params}, inputs, cond, t, clean, model.train_mask, positions)[0]
      return v[:, offset + start:offset + start + size]

    x = ode.integrate(v_fn, jax.random.normal(jax.random.fold_in(rng, k), (b, size, C)), FLOW["steps"])
    out[f"unit {k}"] = float(err(x, seq[:, start:start + size]).mean())
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("names", help="comma-separated model names")
  parser.add_argument("--steps", type=int, default=400)
  args = parser.parse_args()
  for name in args.names.split(","):
    model = build(name)
    print(f"{name}: training {args.steps} steps", flush=True)
    params, loss = train(model, args.steps)
    fr = free_running(name, model, params)
    tf = teacher_forced(name, model, params)
    print(f"{name}: loss {loss:.4f}; free-running exact {fr['exact']:.2f}, token-ok {fr['token_ok']:.2f}; "
          "teacher-forced error " + ", ".join(f"{k} {v:.3f}" for k, v in tf.items()), flush=True)


if __name__ == "__main__":
  main()
