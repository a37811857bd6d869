"""The image decoders' 3x3 convolutions on this CPU: XLA's convolution (f32, bf16 -> f32) against arjax's
row-chunked bf16 products (`arjax.nn.conv.conv3x3_rows`), its f32 Winograd F(4x4, 3x3)
(`arjax.nn.conv.winograd_conv3x3`) and, on CPUs with AVX512-VNNI, its int8 kernel (`arjax.nn.cpu_int8.conv3x3`),
side by side, then VAR-d16's whole VQ decode with plain f32 params and with `conv.for_decoding` ones: f32
(Winograd 3x3 kernels), bf16 and int8 - what the samplers run with.

  JAX_PLATFORMS=cpu python scripts/bench_conv.py [--repeats 3] [--no-decode]

Shapes: the decoder convs of VAR-d16's VQ-VAE at batch 2 (ch 160, ch_mult 1, 1, 2, 2, 4). Prints ms per call
(best of --repeats), GFLOP/s (of the direct convolution's 2 x 9 x C x D flops per pixel), the ratios to the f32
convolution, the largest differences from the f32 result relative to its largest value, and the machine load.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_sampling  # noqa: E402
from arjax import host  # noqa: E402
from arjax.nn import conv as conv_lib  # noqa: E402
from arjax.nn import cpu_int8, quant  # noqa: E402

# (batch, size, in channels, out channels)
SHAPES = [(2, 256, 160, 160), (2, 128, 320, 160), (2, 128, 320, 320), (2, 64, 320, 320), (2, 32, 640, 320),
          (2, 16, 640, 640)]


def best_seconds(fn, args, repeats: int) -> float:
  return bench_sampling.time_call(lambda: fn(*args), repeats)[1]


def xla_conv(x, w, acc=None):
  return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      preferred_element_type=acc)


def conv_rows(repeats: int):
  int8 = cpu_int8.available()
  print("| conv (batch, size, C -> D) | XLA f32 | XLA bf16 -> f32 | conv3x3_rows (bf16 -> f32) | Winograd (f32) | "
        + ("int8 kernel | " if int8 else "") + "rows / f32 | Winograd / f32 | " + ("int8 / Winograd | " if int8 else "")
        + "max err rows, Winograd" + (", int8" if int8 else "") + " |\n" + "|---" * (8 + 2 * int8) + "|")
  bf = lambda a: a.astype(jnp.bfloat16)
  wino = jax.jit(conv_lib.winograd_conv3x3)
  int8_conv = jax.jit(lambda x, k: cpu_int8.conv3x3(x, k.q, k.scale.reshape(-1)))
  for b, s, c, d in SHAPES:
    x = jax.random.normal(jax.random.PRNGKey(0), (b, s, s, c))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, c, d)) * (9 * c) ** -0.5
    u, k = conv_lib.winograd(w).u, quant.quantize_kernel(w)
    flops = 2 * 9 * c * d * b * s * s
    f32, bf16, rows = (jax.jit(xla_conv), jax.jit(lambda x, w: xla_conv(x, w, jnp.float32)),
                       jax.jit(conv_lib.conv3x3_rows))
    t = [best_seconds(f32, (x, w), repeats), best_seconds(bf16, (bf(x), bf(w)), repeats),
         best_seconds(rows, (x, bf(w)), repeats), best_seconds(wino, (x, u), repeats)]
    outs = [rows(x, bf(w)), wino(x, u)]
    if int8:
      t.append(best_seconds(int8_conv, (x, k), repeats))
      outs.append(int8_conv(x, k))
    ref = f32(x, w)
    err = ", ".join(f"{float(jnp.abs(y - ref).max() / jnp.abs(ref).max()):.1e}" for y in outs)
    cells = " | ".join(f"{1e3 * s_:.0f} ms ({flops / s_ / 1e9:.0f} GF/s)" for s_ in t)
    ratios = [t[2] / t[0], t[3] / t[0]] + ([t[4] / t[3]] if int8 else [])
    print(f"| {b}, {s}x{s}, {c} -> {d} | {cells} | " + " | ".join(f"{r:.2f}" for r in ratios) + f" | {err} |",
          flush=True)


def var_decode(repeats: int):
  _, model, _ = bench_sampling.build(os.path.join(bench_sampling.ROOT, bench_sampling.CONFIGS["var"]))
  tok, params = model.tokenizer, model.tokenizer_params
  f_hat = jax.random.normal(jax.random.PRNGKey(0), (2, *tok.grid, tok.code_dim))
  decode = jax.jit(tok.fhat_to_image)
  prepare = jax.jit(conv_lib.for_decoding, static_argnums=(1, 2))
  ref = decode(params, f_hat)
  t32 = best_seconds(decode, (params, f_hat), repeats)
  parts = [f"VAR-d16 VQ decode, batch 2 (random weights): f32 {t32:.2f} s"]
  cases = [("Winograd f32", "float32", False), ("bf16 convs", "bfloat16", False)]
  for name, dtype, int8 in cases + ([("int8 convs", "float32", True)] if cpu_int8.available() else []):
    prepared = prepare(params, dtype, int8)
    t = best_seconds(decode, (prepared, f_hat), repeats)
    diff = jnp.abs(decode(prepared, f_hat) - ref)
    parts.append(f"{name} {t:.2f} s ({t / t32:.2f}x; pixel difference (range [-1, 1]) mean "
                 f"{float(diff.mean()):.1e}, max {float(diff.max()):.1e})")
  print("; ".join(parts))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no-decode", action="store_true", help="skip the whole VAR-d16 decode")
  a = p.parse_args()
  print(host.describe())
  conv_rows(a.repeats)
  if not a.no_decode:
    var_decode(a.repeats)
  print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
