"""Dense products on this CPU: f32, bf16 weights (XLA's form and the AVX512 kernel arjax/nn/cpu_bf16.cc) and int8
weights (XLA's int8 dot and the AVX512-VNNI kernel arjax/nn/cpu_int8.cc), side by side in one run.

  JAX_PLATFORMS=cpu python scripts/bench_dense_kernels.py [--rounds 5]

Each row is one Dense product y = x . w as `quant.dot_general` computes it for an f32, bf16 or Int8 kernel (the
int8 activations' per-row quantisation and the rescale included): VAR-d16's teacher-forced projections (batch 2 +
CFG: 4 x 680 rows) and decode-step products (LlamaGen-B's, and a 4096 x 16384 weight that outgrows the CPU's caches:
weight-read bound). Every variant is compiled first, then timed in rounds over all of them (best per variant), so
load drifts hit them alike. Prints ms, the kernels' GOP/s and weight-read GB/s, the ratios and the load.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from arjax import host
from arjax.nn import cpu_bf16, cpu_int8, quant

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

  bf16, int8 = w.astype(jnp.bfloat16), quant.quantize_kernel(w)
  return {"f32": (loop(lambda x, w: x @ w), w),
          "bf16, XLA": (loop(lambda x, w: quant.bf16_dot(x, w, DOT, impl="xla")), bf16),
          "bf16, kernel": (loop(cpu_bf16.matmul), bf16),
          "int8, XLA": (loop(lambda x, w: quant.int8_dot(x, w, DOT, impl="xla")), int8),
          "int8, kernel": (loop(lambda x, w: quant.int8_dot(x, w, DOT, impl="cpu")), int8)}, repeats


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=5)
  a = p.parse_args()
  if not (cpu_int8.available() and cpu_bf16.available()):
    raise SystemExit("the kernels do not serve this machine (need AVX512F / AVX512-VNNI and a C++ compiler)")
  print(host.describe())
  print("| product | f32 ms | bf16 XLA ms | bf16 kernel ms | int8 XLA ms | int8 kernel ms | bf16 kernel GFLOP/s, "
        "weight GB/s | int8 kernel GOP/s, weight GB/s | bf16 kernel / f32 | bf16 kernel / bf16 XLA | "
        "int8 kernel / f32 |\n" + "|---" * 11 + "|")
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
    ms = " | ".join(f"{best[v]:.3f}" for v in fns)
    rates = lambda v, width: f"{2 * m * k * n / best[v] / 1e6:.0f}, {width * k * n / best[v] / 1e6:.1f}"
    f32, bf16 = best["f32"], best["bf16, kernel"]
    print(f"| {name} | {ms} | {rates('bf16, kernel', 2)} | {rates('int8, kernel', 1)} | {bf16 / f32:.2f} | "
          f"{bf16 / best['bf16, XLA']:.2f} | {best['int8, kernel'] / f32:.2f} |", flush=True)
  print(f"load {host.load():.2f} after the run")


if __name__ == "__main__":
  main()
