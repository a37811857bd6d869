"""XLA attention on this CPU: arjax's `xla_attention` against the 5-D grouped form it replaced, side by side.

  JAX_PLATFORMS=cpu python scripts/bench_xla_attention.py [--repeats 10]

The old form computed 'bqgrd,bgkd->bgrqk' logits and scaled them; the current one folds a group's query heads
into the query axis ('bgmd,bgkd->bgmk', keys minor) and scales q. Shapes: VAR-d16's last scale (256 queries
against 680 cached keys, batch 2 + CFG), LlamaGen-B's decode step (1 query, 1024 cached keys, batch 2 + CFG), a
GQA decode step (4 query heads per kv head) and a training step of the `shapes` paradigms (forward + backward,
64 tokens, batch 64). Prints ms per call, the ratio new / old and the machine load.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp

from arjax import host
from arjax.nn.attention import xla_attention

# name: (batch, queries, query heads, kv heads, keys, head dim, with backward)
SHAPES = {"VAR-d16 last scale": (4, 256, 16, 16, 680, 64, False),
          "LlamaGen-B decode, 1024 cached": (4, 1, 12, 12, 1024, 64, False),
          "GQA decode (12 q / 3 kv heads)": (4, 1, 12, 3, 1024, 64, False),
          "shapes training fwd+bwd": (64, 64, 6, 6, 64, 32, True)}


def old_attention(q_BQHD, k_BGKD, v_BGKD):
  """The replaced form (mask None): 5-D grouped logits, scaled after the product."""
  b, lq, h, d = q_BQHD.shape
  g = k_BGKD.shape[1]
  q = q_BQHD.reshape(b, lq, g, h // g, d)
  logits = jnp.einsum("bqgrd,bgkd->bgrqk", q, k_BGKD, preferred_element_type=jnp.float32) * d ** -0.5
  m = jnp.max(logits, axis=-1, keepdims=True)
  p = jnp.exp(logits - m)
  p = p / p.sum(-1, keepdims=True)
  out = jnp.einsum("bgrqk,bgkd->bqgrd", p, v_BGKD, preferred_element_type=jnp.float32)
  return out.reshape(b, lq, h, d)


def seconds(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  t = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - t) / repeats


def with_grad(fn):
  return jax.grad(lambda q, k, v: fn(q, k, v).sum(), argnums=(0, 1, 2))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--repeats", type=int, default=10)
  a = p.parse_args()
  print(host.describe())
  print("| shape | old 5-D form | xla_attention | new / old |\n|---|---|---|---|")
  for name, (b, lq, h, g, lk, d, grad) in SHAPES.items():
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    args = (jax.random.normal(keys[0], (b, lq, h, d)), jax.random.normal(keys[1], (b, g, lk, d)),
            jax.random.normal(keys[2], (b, g, lk, d)))
    new = lambda q, k, v: xla_attention(q, k, v, None)
    fns = [with_grad(f) if grad else f for f in (old_attention, new)]
    t_old, t_new = (seconds(jax.jit(f), args, a.repeats) for f in fns)
    print(f"| {name} | {1e3 * t_old:.2f} ms | {1e3 * t_new:.2f} ms | {t_new / t_old:.2f} |", flush=True)
  print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
