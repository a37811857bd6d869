"""Decode attention on CPU: a C++ XLA FFI kernel (cpu_attention.cc) over f32, bf16 or int8 KV caches.

Why: decoding reads the whole KV cache every step, and XLA:CPU's products read an f32 cache at memory speed but a
bf16 or int8 one at about a third of it, so no smaller cache paid (docs/inference_speed.md). The kernel fuses the
conversion into its reads: over LlamaGen-B's 12 layers at 1024 cached tokens (batch 4) an int8 cache takes
4.5 ms a step, a bf16 one 6.2 ms and an f32 one 10.2 ms, against 12.3 ms for XLA over f32
(`scripts/bench_cpu_attention.py`, no-AMX Xeon, 2 cores).

Many query rows per kv head (VAR's larger scales) take a second path of the same kernel on CPUs with AVX512F
(`many_rows`): register-tiled products at 0.48-0.55x the time of XLA's batched ones over an f32 cache
(`scripts/bench_cpu_attention.py --var-scales`); a bf16 or int8 cache is converted to f32 once per (row, kv head).

Built and registered by `arjax.nn.cpu_kernels` (compiled on first use with the host's C++ compiler); `available()`
says whether it serves this process (else `arjax.nn.attention` uses XLA). The reference is
`attention.xla_attention`.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp

from arjax.nn import cpu_kernels

SOURCE = pathlib.Path(__file__).with_suffix(".cc")
# cache dtype -> (FFI target, the handler's symbol in the library)
TARGETS = {jnp.dtype(jnp.float32): ("arjax_decode_attention_f32", "ArjaxDecodeAttentionF32"),
           jnp.dtype(jnp.bfloat16): ("arjax_decode_attention_bf16", "ArjaxDecodeAttentionBF16"),
           jnp.dtype(jnp.int8): ("arjax_decode_attention_s8", "ArjaxDecodeAttentionS8")}
MAX_ROWS = 16  # query rows per (row, kv head) of the decode path; more take the many-row path (`many_rows`) or XLA
MAX_HEAD_DIM = 256  # kMaxHeadDim in the kernel


def available() -> bool:
  """Whether the kernel serves this process (`cpu_kernels.load`)."""
  return cpu_kernels.load(SOURCE, TARGETS.values())


def many_rows(dtype, rows: int, head_dim: int) -> bool:
  """Whether `rows` query rows per kv head take the kernel's many-row path (register-tiled products; VAR's larger
  scales; about half the time of XLA's batched products there, `scripts/bench_cpu_attention.py --var-scales`): more
  than MAX_ROWS, a cache dtype the kernel takes, a head dim that is a multiple of 64, a CPU with AVX512F."""
  return (jnp.dtype(dtype) in TARGETS and rows > MAX_ROWS and head_dim % 64 == 0
          and "avx512f" in cpu_kernels.cpu_flags())


def decode_attention(q_BGMD, k_BGSD, v_BGSD, pos_BS, limit_BM, k_scale_BGS=None, v_scale_BGS=None):
  """out f32 [B, G, M, D]: query rows q (f32, already scaled) against cache slots k / v [B, G, S, D] (f32, bf16,
  or int8 with per-slot scales [B, G, S]); slot s holds sequence index pos_BS[b, s] (-1 empty) and row m sees
  0 <= pos <= limit_BM[b, m] (pos and limit may have batch 1). A row that sees no slot is zeros."""
  dtype = jnp.dtype(k_BGSD.dtype)
  if dtype not in TARGETS or v_BGSD.dtype != dtype:
    raise ValueError(f"decode_attention takes f32, bf16 or int8 caches, got k {k_BGSD.dtype}, v {v_BGSD.dtype}")
  if (k_scale_BGS is None) != (dtype != jnp.int8) or (k_scale_BGS is None) != (v_scale_BGS is None):
    raise ValueError("int8 caches need k_scale and v_scale [B, G, S]; float caches take none")
  cpu_kernels.register(SOURCE, tuple(TARGETS.values()))
  one = jnp.ones((1,), jnp.float32)
  scales = (one, one) if k_scale_BGS is None else (k_scale_BGS, v_scale_BGS)
  call = jax.ffi.ffi_call(TARGETS[dtype][0], jax.ShapeDtypeStruct(q_BGMD.shape, jnp.float32),
                          vmap_method="sequential")
  return call(q_BGMD.astype(jnp.float32), k_BGSD, scales[0].astype(jnp.float32), v_BGSD,
              scales[1].astype(jnp.float32), pos_BS.astype(jnp.int32), limit_BM.astype(jnp.int32))
