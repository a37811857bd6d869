"""int8 Dense products on CPUs with AVX512-VNNI: a C++ XLA FFI kernel (cpu_int8.cc).

Why: XLA:CPU runs an int8 x int8 -> int32 dot at its f32 rate (VAR-d16's [2720, 1024] x [1024, 4096]: 84 ms int8,
80 ms f32, no-AMX Xeon, 2 cores), so int8 weights only paid where decoding is bound by reading them. The kernel
multiplies with vpdpbusd (4 u8 x s8 pairs per int32 lane) and fuses the activations' per-row quantisation and the
rescaling: 22 ms there, and a decoding step's matrix-vector products read the weights at memory speed
(`scripts/bench_int8_matmul.py`, side by side with XLA).

`matmul` computes what `quant.int8_dot`'s XLA form does (the same quantisation, exact int32 sums, the rescale in
the same order); the two agree to float rounding (relative 1e-7). `quant` dispatches to it on CPU when
`available()`.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp

from arjax.nn import cpu_kernels

SOURCE = pathlib.Path(__file__).with_suffix(".cc")
TARGETS = (("arjax_int8_matmul", "ArjaxInt8Matmul"),)


def available() -> bool:
  """Whether the kernel serves this process: the CPU has AVX512-VNNI and the library loads (`cpu_kernels.load`)."""
  return "avx512_vnni" in cpu_kernels.cpu_flags() and cpu_kernels.load(SOURCE, TARGETS)


def matmul(x_MK, q_KN, w_scale_N):
  """f32 [M, N]: x [M, K] quantised per row (symmetric int8, as `quant.symmetric(x, [1])`) times the int8 weights
  q [K, N], rescaled by the rows' scales and the columns' w_scale [N]."""
  if x_MK.ndim != 2 or q_KN.ndim != 2 or x_MK.shape[1] != q_KN.shape[0] or w_scale_N.shape != q_KN.shape[1:]:
    raise ValueError(f"int8 matmul takes x [M, K], q [K, N], w_scale [N]; got {x_MK.shape}, {q_KN.shape}, "
                     f"{w_scale_N.shape}")
  if q_KN.dtype != jnp.int8:
    raise ValueError(f"int8 matmul weights must be int8, got {q_KN.dtype}")
  cpu_kernels.register(SOURCE, TARGETS)
  call = jax.ffi.ffi_call(TARGETS[0][0], jax.ShapeDtypeStruct((x_MK.shape[0], q_KN.shape[1]), jnp.float32),
                          vmap_method="sequential")
  return call(x_MK.astype(jnp.float32), q_KN, w_scale_N.astype(jnp.float32))
