"""Which XLA:CPU product paths are fast on this machine: the dot and convolution variants arjax's precision modes
(arjax.nn.quant) rely on, side by side in one run, as GFLOP/s.

  JAX_PLATFORMS=cpu python scripts/bench_matmul.py

Rows: VAR-d16's teacher-forced projection ([4 x 680, 1024] x [1024, 1024]), one decoding step of a 4096-wide MLP
([2, 4096] x [4096, 16384], weight-bandwidth bound) and LlamaGen-B's logits ([4, 768] x [768, 16384]); and a
3x3, 256-channel convolution at 64 x 64 (the VQ decoder's). Columns: f32; bf16 operands with a bf16 result;
bf16 operands accumulated into f32 (`preferred_element_type`, what `quant.dot_general` does); int8 x int8 ->
int32; int8 weights dequantised to f32 before an f32 dot (the naive int8 path).
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp

DOT = (((1,), (0,)), ((), ()))
CONV_DN = ("NHWC", "HWIO", "NHWC")


def seconds(fn, *args, n: int = 5) -> float:
  """Mean seconds per call after one warm-up (compile) call."""
  jax.block_until_ready(fn(*args))
  t = time.perf_counter()
  for _ in range(n):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - t) / n


def dot_variants():
  """name -> (jitted fn, operand dtypes) for one [M, K] x [K, N] product."""
  dot = lambda acc: jax.jit(lambda a, b: jax.lax.dot_general(a, b, DOT, preferred_element_type=acc))
  dequant = jax.jit(lambda a, b: a @ (b.astype(jnp.float32) * 0.01))
  return {"f32": (dot(None), jnp.float32, jnp.float32), "bf16->bf16": (dot(None), jnp.bfloat16, jnp.bfloat16),
          "bf16->f32": (dot(jnp.float32), jnp.bfloat16, jnp.bfloat16),
          "s8->s32": (dot(jnp.int32), jnp.int8, jnp.int8), "f32 x dequant(s8)": (dequant, jnp.float32, jnp.int8)}


def operand(shape, dtype, seed):
  x = jax.random.normal(jax.random.PRNGKey(seed), shape) * (30.0 if dtype == jnp.int8 else 1.0)
  return x.astype(dtype)


def conv_taps(x, w, acc=None):
  """A SAME 'conv' as a sum of kh * kw shifted [B*H*W, C] x [C, D] products."""
  kh, kw = w.shape[:2]
  h, wd = x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  return sum(jnp.einsum("bhwc,cd->bhwd", xp[:, i:i + h, j:j + wd], w[i, j], preferred_element_type=acc)
             for i in range(kh) for j in range(kw))


def main():
  print(f"device: {jax.devices()[0].device_kind}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}")
  print("| product | " + " | ".join(dot_variants()) + " |")
  print("|---" * (len(dot_variants()) + 1) + "|")
  for name, (m, k, n) in {"VAR proj [2720,1024]x[1024,1024]": (2720, 1024, 1024),
                          "decode MLP [2,4096]x[4096,16384]": (2, 4096, 16384),
                          "LlamaGen logits [4,768]x[768,16384]": (4, 768, 16384)}.items():
    cells = []
    for fn, da, db in dot_variants().values():
      s = seconds(fn, operand((m, k), da, 0), operand((k, n), db, 1))
      cells.append(f"{2 * m * k * n / s / 1e9:.0f} GF/s ({1e3 * s:.1f} ms)")
    print(f"| {name} | " + " | ".join(cells) + " |")
  x, w = operand((2, 64, 64, 256), jnp.float32, 0), operand((3, 3, 256, 256), jnp.float32, 1) * 0.05
  flops = 2 * 2 * 64 * 64 * 256 * 256 * 9
  conv = lambda acc: jax.jit(lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=CONV_DN,
                                                                        preferred_element_type=acc))
  bf = lambda t: t.astype(jnp.bfloat16)
  for name, fn, args in [("conv f32", conv(None), (x, w)), ("conv bf16->f32", conv(jnp.float32), (bf(x), bf(w))),
                         ("taps f32", jax.jit(conv_taps), (x, w)),
                         ("taps bf16->f32", jax.jit(lambda a, b: conv_taps(a, b, jnp.float32)), (bf(x), bf(w)))]:
    s = seconds(fn, *args, n=3)
    print(f"3x3 conv 256ch 64x64 batch 2, {name}: {flops / s / 1e9:.0f} GF/s ({1e3 * s:.1f} ms)")


if __name__ == "__main__":
  main()
