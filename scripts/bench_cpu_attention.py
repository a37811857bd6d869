"""Decode attention on this CPU: the C++ kernel (arjax/nn/cpu_attention.cc) over f32 / bf16 / int8 caches against
XLA over f32 and bf16 caches, side by side.

  JAX_PLATFORMS=cpu python scripts/bench_cpu_attention.py [--lengths 256,1024] [--rounds 5] [--var-scales]

LlamaGen-B's decode step: batch 2 + CFG (4 rows), 12 heads of 64, one query against `length` cached tokens, in
each of 12 layers with their own caches (the layers' caches together outgrow the CPU's caches, as in sampling).
32 steps in a `lax.fori_loop`, each step's query fed by the last output. Every variant is compiled first, then
timed in rounds over all of them (best per variant), so load drifts hit them alike. Prints ms per step (all 12
layers), the ratio to XLA over f32, the cache's bytes and the machine load.

--var-scales: the kernel's many-row path against XLA at VAR-d16's larger scales instead: one layer's whole-unit
attention of a scale's pn x pn tokens against every token so far, 4 rows (batch 2 + CFG), 16 heads of 64, over the
same cache dtypes; ms per call (best over rounds) and GFLOP/s of the two products over the f32 cache.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from arjax import cache as cache_lib
from arjax import host
from arjax import masks
from arjax.nn import attention

ROWS, HEADS, HEAD_DIM, LAYERS, STEPS = 4, 12, 64, 12, 32
VARIANTS = {"XLA, f32 cache": ("xla", jnp.float32), "XLA, bf16 cache": ("xla", jnp.bfloat16),
            "kernel, f32 cache": ("auto", jnp.float32), "kernel, bf16 cache": ("auto", jnp.bfloat16),
            "kernel, int8 cache": ("auto", jnp.int8)}


def decode_loop(length: int, impl: str, dtype):
  """(jitted steps(q), cache bytes): STEPS decode steps over LAYERS random caches of `length` written slots."""
  rng = np.random.default_rng(0)
  shape = (ROWS, HEADS, length, HEAD_DIM)
  kv = cache_lib.KVCache(k=tuple(jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(LAYERS)),
                         v=tuple(jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(LAYERS)),
                         pos_BS=jnp.arange(length, dtype=jnp.int32)[None], end_B=jnp.full((ROWS,), length))
  kv = cache_lib.astype(kv, dtype)
  idx = jnp.full((1, 1), length - 1, jnp.int32)

  def step(_, q):
    for layer in range(LAYERS):
      q = q + 0.01 * attention.cached_attention(q, kv.k[layer], kv.v[layer], masks.causal(), idx, kv.pos_BS,
                                                impl=impl)
    return q

  steps = jax.jit(lambda q: jax.lax.fori_loop(0, STEPS, step, q))
  return steps, sum(a.nbytes for a in jax.tree.leaves((kv.k, kv.v)))


VAR_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # VAR-d16's patch_nums


def var_scales(rounds: int):
  names = list(VARIANTS)
  print("| scale | query rows | keys | " + " | ".join(f"{n} ms" for n in names) +
        " | kernel f32 GFLOP/s | kernel f32 / XLA f32 | kernel bf16 / XLA bf16 |\n" + "|---" * (len(names) + 6) + "|")
  rng = np.random.default_rng(0)
  for i, pn in enumerate(VAR_SCALES):
    rows, keys = pn * pn, sum(n * n for n in VAR_SCALES[:i + 1])
    if rows <= 16:
      continue
    q, k, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in
               ((ROWS, rows, 16, 64), (ROWS, 16, keys, 64), (ROWS, 16, keys, 64)))
    pos, idx = jnp.arange(keys, dtype=jnp.int32)[None], jnp.arange(keys - rows, keys, dtype=jnp.int32)[None]
    held = {dtype: cache_lib.astype(cache_lib.KVCache(k=(k,), v=(v,), pos_BS=pos, end_B=jnp.full((ROWS,), keys)),
                                    dtype) for dtype in {spec[1] for spec in VARIANTS.values()}}
    calls = {name: (jax.jit(lambda q, k, v, impl=impl: attention.cached_attention(
        q, k, v, masks.causal(), idx, pos, whole_unit=True, filled=True, impl=impl)), held[dtype].k[0],
                    held[dtype].v[0]) for name, (impl, dtype) in VARIANTS.items()}
    best = dict.fromkeys(calls, float("inf"))
    for fn, k_c, v_c in calls.values():
      jax.block_until_ready(fn(q, k_c, v_c))
    for _ in range(rounds):
      for name, (fn, k_c, v_c) in calls.items():
        t = time.perf_counter()
        jax.block_until_ready(fn(q, k_c, v_c))
        best[name] = min(best[name], time.perf_counter() - t)
    flops = 4 * ROWS * 16 * rows * keys * 64
    ms = " | ".join(f"{best[n] * 1e3:.2f}" for n in names)
    print(f"| {pn}x{pn} | {rows} | {keys} | {ms} | {flops / best['kernel, f32 cache'] / 1e9:.0f} | "
          f"{best['kernel, f32 cache'] / best['XLA, f32 cache']:.2f} | "
          f"{best['kernel, bf16 cache'] / best['XLA, bf16 cache']:.2f} |")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--lengths", default="256,1024")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--var-scales", action="store_true", help="the many-row path at VAR-d16's scales instead")
  a = p.parse_args()
  print(host.describe())
  if a.var_scales:
    var_scales(a.rounds)
    print(f"load {host.load():.2f} after the run")
    return
  q = jnp.asarray(np.random.default_rng(1).standard_normal((ROWS, 1, HEADS, HEAD_DIM)), jnp.float32)
  print("| cached tokens | attention | cache MB | ms / step (12 layers) | / XLA f32 |\n|---|---|---|---|---|")
  for length in (int(n) for n in a.lengths.split(",")):
    loops = {name: decode_loop(length, *spec) for name, spec in VARIANTS.items()}
    for fn, _ in loops.values():
      jax.block_until_ready(fn(q))
    best = dict.fromkeys(loops, float("inf"))
    for _ in range(a.rounds):
      for name, (fn, _) in loops.items():
        t = time.perf_counter()
        jax.block_until_ready(fn(q))
        best[name] = min(best[name], (time.perf_counter() - t) / STEPS * 1e3)
    for name, ms in best.items():
      print(f"| {length} | {name} | {loops[name][1] / 1e6:.0f} | {ms:.2f} | {ms / best['XLA, f32 cache']:.2f} |")
  print(f"load {host.load():.2f} after the run")


if __name__ == "__main__":
  main()
