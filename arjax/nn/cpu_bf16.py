"""bf16-weight Dense products on CPUs with AVX512F: a C++ XLA FFI kernel (cpu_bf16.cc).

Why: without AMX, XLA:CPU converts a bf16 operand element by element inside its dot, so a decoding step over bf16
weights took longer than over f32 ones (a [2, 4096] x [4096, 16384] product: 20 ms bf16, 16 ms f32, no-AMX Xeon,
2 cores) although it reads half the bytes. The kernel multiplies on the f32 register tile shared with the attention
kernel, converting the weights as it reads them for <= 6 rows (decoding: 6.9 ms there, 0.46x f32) and each
64-column panel once into f32 scratch for more (VAR's products: f32's rate) (`scripts/bench_dense_kernels.py`).

`matmul` computes what `quant.dot_general`'s XLA form does for a bf16 kernel: the activations rounded to bf16, the
products and sums in f32 (the two agree to f32 summation order). `quant` dispatches to it on CPU where `serves`.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp

from arjax.nn import cpu_kernels

SOURCE = pathlib.Path(__file__).with_suffix(".cc")
TARGETS = (("arjax_bf16_matmul", "ArjaxBf16Matmul"),)
AMX_MAX_ROWS = 16  # on AMX CPUs XLA's bf16 products (oneDNN) are left the larger products


def available() -> bool:
  """Whether the kernel serves this process: the CPU has AVX512F and the library loads (`cpu_kernels.load`)."""
  return "avx512f" in cpu_kernels.cpu_flags() and cpu_kernels.load(SOURCE, TARGETS)


def serves(rows: int) -> bool:
  """Whether a product with `rows` rows takes the kernel: where it is available, on CPUs without AMX any product, on
  AMX CPUs (where XLA's bf16 products with f32 accumulation take the AMX path, ~4x its f32 rate at VAR's shapes)
  only decoding's few rows, which are bound by reading the weights."""
  from arjax import host
  return available() and (rows <= AMX_MAX_ROWS or not host.has_amx())


def matmul(x_MK, w_KN):
  """f32 [M, N]: x [M, K] rounded to bf16 times the bf16 weights w [K, N], products and sums in f32."""
  if x_MK.ndim != 2 or w_KN.ndim != 2 or x_MK.shape[1] != w_KN.shape[0]:
    raise ValueError(f"bf16 matmul takes x [M, K] and w [K, N]; got {x_MK.shape}, {w_KN.shape}")
  if w_KN.dtype != jnp.bfloat16:
    raise ValueError(f"bf16 matmul weights must be bfloat16, got {w_KN.dtype}")
  cpu_kernels.register(SOURCE, TARGETS)
  call = jax.ffi.ffi_call(TARGETS[0][0], jax.ShapeDtypeStruct((x_MK.shape[0], w_KN.shape[1]), jnp.float32),
                          vmap_method="sequential")
  return call(x_MK.astype(jnp.float32), w_KN)
