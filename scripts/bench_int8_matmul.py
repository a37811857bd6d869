"""int8 Dense products on this CPU: the AVX512-VNNI kernel (arjax/nn/cpu_int8.cc) against XLA's int8 dot and the
f32 dot, side by side in one run.

  JAX_PLATFORMS=cpu python scripts/bench_int8_matmul.py [--rounds 5]

Each row is one Dense product y = x . w as `quant.int8_dot` computes it (the activations' per-row quantisation
and the rescale included): VAR-d16's teacher-forced projections (batch 2 + CFG: 4 x 680 rows) and LlamaGen-B's
decode-step projections (4 rows, weight-read bound). Every variant is compiled first, then timed in rounds over
all of them (best per variant), so load drifts hit them alike. Prints ms, GOP/s, the ratios and the load.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from arjax import host
from arjax.nn import cpu_int8, quant

DOT = (((1,), (0,)), ((), ()))
SHAPES = {"VAR qkv [2720,1024]x[1024,3072]": (2720, 1024, 3072),
          "VAR fc1 [2720,1024]x[1024,4096]": (2720, 1024, 4096),
          "VAR fc2 [2720,4096]x[4096,1024]": (2720, 4096, 1024),
          "LlamaGen qkv [4,768]x[768,2304]": (4, 768, 2304),
          "LlamaGen ffn [4,768]x[768,4096]": (4, 768, 4096),
          "decode MLP [2,4096]x[4096,16384]": (2, 4096, 16384)}
REPEATS = 64  # products per timed call for the decode rows (each alone is tens of microseconds)


def variants(x, w):
  """name -> jitted fn of (x, f32 w, Int8 w); decode-sized products run REPEATS times in a loop."""
  repeats = REPEATS if x.shape[0] < 64 else 1

  def loop(product):
    def run(x, w):
      return jax.lax.fori_loop(0, repeats, lambda _, y: y + 1e-3 * product(x + y[:, :1], w), jnp.zeros(
          (x.shape[0], w.shape[-1]), jnp.float32))
    return jax.jit(run)

  return {"f32": (loop(lambda x, w: x @ w), w),
          "int8, XLA": (loop(lambda x, w: quant.int8_dot(x, w, DOT, impl="xla")), quant.quantize_kernel(w)),
          "int8, kernel": (loop(lambda x, w: quant.int8_dot(x, w, DOT, impl="cpu")), quant.quantize_kernel(w))}, \
      repeats


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=5)
  a = p.parse_args()
  if not cpu_int8.available():
    raise SystemExit("the int8 kernel does not serve this machine (needs AVX512-VNNI and a C++ compiler)")
  print(host.describe())
  print("| product | f32 ms | int8 XLA ms | int8 kernel ms | kernel GOP/s | kernel / f32 | kernel / int8 XLA |\n"
        "|---|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for name, (m, k, n) in SHAPES.items():
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, n)) / np.sqrt(k), jnp.float32)
    fns, repeats = variants(x, w)
    for fn, wv in fns.values():
      jax.block_until_ready(fn(x, wv))
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(a.rounds):
      for v, (fn, wv) in fns.items():
        t = time.perf_counter()
        jax.block_until_ready(fn(x, wv))
        best[v] = min(best[v], (time.perf_counter() - t) / repeats * 1e3)
    f32, xla, kern = best["f32"], best["int8, XLA"], best["int8, kernel"]
    print(f"| {name} | {f32:.3f} | {xla:.3f} | {kern:.3f} | {2 * m * k * n / kern / 1e6:.0f} | {kern / f32:.2f} | "
          f"{kern / xla:.2f} |", flush=True)
  print(f"load {host.load():.2f} after the run")


if __name__ == "__main__":
  main()
