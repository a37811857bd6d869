"""Which XLA:CPU product paths are fast on this machine: the dot and convolution variants arjax's precision modes
(arjax.nn.quant) rely on, side by side in one run, as GFLOP/s.

  JAX_PLATFORMS=cpu python scripts/bench_matmul.py

Rows: VAR-d16's teacher-forced projection ([4 x 680, 1024] x [1024, 1024]), one decoding step of a 4096-wide MLP
([2, 4096] x [4096, 16384], weight-bandwidth bound) and LlamaGen-B's logits ([4, 768] x [768, 16384]); and a
3x3, 256-channel convolution at 64 x 64 (the VQ decoder's). Columns: f32; bf16 operands with a bf16 result;
bf16 operands accumulated into f32 (`preferred_element_type`, what `quant.dot_general` does); int8 x int8 ->
int32; int8 weights dequantised to f32 before an f32 dot (the naive int8 path).

  JAX_PLATFORMS=cpu python scripts/bench_matmul.py --flags

compares XLA:CPU flag sets instead (FLAG_SETS: the default YNNPACK library fusions, none, oneDNN, YNN / XNN
convolutions): each runs in its own process, on VAR's projection ([2720, 1024] x [1024, 4096]) and the conv, and
the row says which library XLA fused the product into.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from arjax import host

DOT = (((1,), (0,)), ((), ()))
CONV_DN = ("NHWC", "HWIO", "NHWC")
FLAG_SETS = {"default": "", "no library fusion": "--xla_cpu_experimental_ynn_fusion_type=",
             "oneDNN": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
             "oneDNN custom call": "--xla_cpu_experimental_onednn_custom_call=true",
             "XLA conv": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
             "YNN conv": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution",
             "XNN conv": "--xla_cpu_experimental_xnn_fusion_type=+individual_convolution"}
LIBRARIES = ("ynn_fusion", "onednn", "xnn_fusion")


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


def conv_im2col(x, w, acc=None):
  """A SAME 'conv' as one [B*H*W, kh*kw*C] x [kh*kw*C, D] product over the concatenated shifted views."""
  kh, kw, c, d = w.shape
  h, wd = x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  cols = jnp.concatenate([xp[:, i:i + h, j:j + wd] for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.einsum("bhwk,kd->bhwd", cols, w.reshape(kh * kw * c, d), preferred_element_type=acc)


def conv_fn(acc=None):
  return jax.jit(lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=CONV_DN,
                                                           preferred_element_type=acc))


def flag_cells() -> dict:
  """GFLOP/s (and the fusing library) of VAR's projection and the 3x3 conv, f32 and bf16 -> f32, this process."""
  out = {}
  x, w = operand((2720, 1024), jnp.float32, 0), operand((1024, 4096), jnp.float32, 1)
  xc, wc = operand((2, 64, 64, 256), jnp.float32, 0), operand((3, 3, 256, 256), jnp.float32, 1) * 0.05
  bf = lambda t: t.astype(jnp.bfloat16)
  for name, fn, args, flops in [
      ("proj f32", dot_variants()["f32"][0], (x, w), 2 * 2720 * 1024 * 4096),
      ("proj bf16->f32", dot_variants()["bf16->f32"][0], (bf(x), bf(w)), 2 * 2720 * 1024 * 4096),
      ("conv f32", conv_fn(), (xc, wc), 2 * 2 * 64 * 64 * 256 * 256 * 9),
      ("conv bf16->f32", conv_fn(jnp.float32), (bf(xc), bf(wc)), 2 * 2 * 64 * 64 * 256 * 256 * 9)]:
    hlo = fn.lower(*args).compile().as_text()
    lib = next((l for l in LIBRARIES if l in hlo), "xla")
    out[name] = f"{flops / seconds(fn, *args) / 1e9:.0f} ({lib})"
  return out


def flags_table():
  """One row per FLAG_SETS entry, each measured in a fresh process with XLA_FLAGS set."""
  print(f"{host.describe()}; GFLOP/s")
  header = False
  for name, flags in FLAG_SETS.items():
    env = dict(os.environ, XLA_FLAGS=flags)
    res = subprocess.run([sys.executable, __file__, "--flag-cells"], env=env, capture_output=True, text=True)
    if res.returncode:
      print(f"| {name} | failed: {res.stderr.strip().splitlines()[-1]} |")
      continue
    cells = json.loads(res.stdout.strip().splitlines()[-1])
    if not header:
      print("| XLA flags | " + " | ".join(cells) + " |\n" + "|---" * (len(cells) + 1) + "|")
      header = True
    print(f"| {name} (`{flags or 'none'}`) | " + " | ".join(cells.values()) + " |", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--flags", action="store_true", help="compare XLA:CPU flag sets (FLAG_SETS)")
  parser.add_argument("--flag-cells", action="store_true", help=argparse.SUPPRESS)  # one flag set, as JSON
  args = parser.parse_args()
  if args.flag_cells:
    print(json.dumps(flag_cells()))
  elif args.flags:
    flags_table()
  else:
    products()


def products():
  print(host.describe())
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
  bf = lambda t: t.astype(jnp.bfloat16)
  for name, fn, args in [("conv f32", conv_fn(), (x, w)), ("conv bf16->f32", conv_fn(jnp.float32), (bf(x), bf(w))),
                         ("taps f32", jax.jit(conv_taps), (x, w)),
                         ("taps bf16->f32", jax.jit(lambda a, b: conv_taps(a, b, jnp.float32)), (bf(x), bf(w))),
                         ("im2col bf16->f32", jax.jit(lambda a, b: conv_im2col(a, b, jnp.float32)), (bf(x), bf(w)))]:
    s = seconds(fn, *args, n=3)
    print(f"3x3 conv 256ch 64x64 batch 2, {name}: {flops / s / 1e9:.0f} GF/s ({1e3 * s:.1f} ms)")


if __name__ == "__main__":
  main()
