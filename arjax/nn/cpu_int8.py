"""int8 Dense products on CPUs with AVX512-VNNI: a C++ XLA FFI kernel (cpu_int8.cc).

Why: XLA:CPU runs an int8 x int8 -> int32 dot at its f32 rate (VAR-d16's [2720, 1024] x [1024, 4096]: 84 ms int8,
80 ms f32, no-AMX Xeon, 2 cores), so int8 weights only paid where decoding is bound by reading them. The kernel
multiplies with vpdpbusd (4 u8 x s8 pairs per int32 lane) and fuses the activations' per-row quantisation and the
rescaling: 22 ms there, and a decoding step's matrix-vector products read the weights at memory speed
(`scripts/bench_dense_kernels.py`, side by side with XLA).

`conv3x3` runs the image decoders' SAME 3x3 convolutions on the same tile, each pixel quantised over its channels
(`conv3x3_reference` is its XLA form).

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
TARGETS = (("arjax_int8_matmul", "ArjaxInt8Matmul"), ("arjax_int8_conv3x3", "ArjaxInt8Conv3x3"))


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


def conv3x3(x_BHWC, q_33CD, w_scale_D):
  """f32 [B, H, W, D]: the SAME 3x3 stride-1 convolution of x, each pixel quantised over its C channels (symmetric
  int8), with the int8 kernel q [3, 3, C, D] (C a multiple of 4), rescaled by each tap's pixel scale and by
  w_scale [D] (`conv3x3_reference`)."""
  if x_BHWC.ndim != 4 or q_33CD.shape[:2] != (3, 3) or q_33CD.ndim != 4 or x_BHWC.shape[3] != q_33CD.shape[2]:
    raise ValueError(f"int8 conv3x3 takes x [B, H, W, C] and q [3, 3, C, D]; got {x_BHWC.shape}, {q_33CD.shape}")
  if x_BHWC.shape[3] % 4 or w_scale_D.shape != q_33CD.shape[3:] or q_33CD.dtype != jnp.int8:
    raise ValueError(f"int8 conv3x3 needs C a multiple of 4, int8 q and w_scale [D]; got C={x_BHWC.shape[3]}, "
                     f"{q_33CD.dtype}, w_scale {w_scale_D.shape}")
  cpu_kernels.register(SOURCE, TARGETS)
  call = jax.ffi.ffi_call(TARGETS[1][0], jax.ShapeDtypeStruct((*x_BHWC.shape[:3], q_33CD.shape[3]), jnp.float32),
                          vmap_method="sequential")
  return call(x_BHWC.astype(jnp.float32), q_33CD, w_scale_D.astype(jnp.float32))


def conv3x3_reference(x_BHWC, q_33CD, w_scale_D):
  """What `conv3x3` computes, in XLA: per-pixel int8 activations, exact int32 sums per tap, each rescaled by its
  pixels' scales, summed in f32, times w_scale."""
  from arjax.nn import quant
  x = quant.symmetric(x_BHWC, [3])
  h, w = x_BHWC.shape[1:3]
  q_pad = jnp.pad(x.q, ((0, 0), (1, 1), (1, 1), (0, 0)))
  s_pad = jnp.pad(x.scale[..., 0], ((0, 0), (1, 1), (1, 1)))
  y = 0.0
  for dy in range(3):
    for dx in range(3):
      acc = jnp.einsum("bhwc,cd->bhwd", q_pad[:, dy:dy + h, dx:dx + w], q_33CD[dy, dx],
                       preferred_element_type=jnp.int32)
      y = y + acc.astype(jnp.float32) * s_pad[:, dy:dy + h, dx:dx + w, None]
  return y * w_scale_D.astype(jnp.float32)
