"""Decode attention on CPU: a C++ XLA FFI kernel (cpu_attention.cc) over f32, bf16 or int8 KV caches.

Why: decoding reads the whole KV cache every step, and XLA:CPU's products read an f32 cache at memory speed but a
bf16 or int8 one at about a third of it, so no smaller cache paid (docs/inference_speed.md). The kernel fuses the
conversion into its reads: over LlamaGen-B's 12 layers at 1024 cached tokens (batch 4) an int8 cache takes
4.5 ms a step, a bf16 one 6.2 ms and an f32 one 10.2 ms, against 12.3 ms for XLA over f32
(`scripts/bench_cpu_attention.py`, no-AMX Xeon, 2 cores).

The library is compiled on first use with the host's C++ compiler (`$CXX`, default g++; `-march=native`) into
`$ARJAX_KERNEL_CACHE` (default ~/.cache/arjax/kernels), keyed by the source, the flags, jaxlib's version and the
CPU's feature flags, and registered as XLA FFI targets. `available()` says whether that worked (it is False off
CPU, without a compiler, or with `ARJAX_CPU_KERNELS=0`; `arjax.nn.attention` then uses XLA). The reference is
`attention.xla_attention`.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp

SOURCE = pathlib.Path(__file__).with_suffix(".cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-fopenmp-simd", "-fassociative-math", "-fno-signed-zeros",
         "-fno-trapping-math", "-shared", "-fPIC")  # reassociation: the per-slot dot reduces as a tree
# cache dtype -> (FFI target, the handler's symbol in the library)
TARGETS = {jnp.dtype(jnp.float32): ("arjax_decode_attention_f32", "ArjaxDecodeAttentionF32"),
           jnp.dtype(jnp.bfloat16): ("arjax_decode_attention_bf16", "ArjaxDecodeAttentionBF16"),
           jnp.dtype(jnp.int8): ("arjax_decode_attention_s8", "ArjaxDecodeAttentionS8")}
MAX_ROWS = 16  # query rows per (row, kv head) the kernel takes; more (VAR's scales) are faster as XLA's GEMMs
MAX_HEAD_DIM = 256  # kMaxHeadDim in the kernel


def _cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next((line for line in f if line.startswith("flags")), "")
  except OSError:
    return platform.processor()


def library_path(compiler: str) -> pathlib.Path:
  """Where the compiled library for this source, compiler, jaxlib and CPU lives."""
  key = hashlib.sha256("\n".join([SOURCE.read_text(), compiler, " ".join(FLAGS), jax.__version__, _cpu_flags(),
                                  platform.machine()]).encode()).hexdigest()[:16]
  root = os.environ.get("ARJAX_KERNEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "arjax", "kernels")
  return pathlib.Path(root) / f"cpu_attention-{key}.so"


def build() -> pathlib.Path:
  """Compiles the kernel library (once per key; concurrent builders each write a temporary file and rename it)."""
  compiler = os.environ.get("CXX", "g++")
  if shutil.which(compiler) is None:
    raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set $CXX) to build {SOURCE.name}")
  path = library_path(compiler)
  if path.exists():
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
  os.close(fd)
  cmd = [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode:
    os.unlink(tmp)
    raise RuntimeError(f"building {SOURCE.name} failed ({' '.join(cmd)}):\n{done.stderr[-4000:]}")
  os.replace(tmp, path)
  return path


@functools.cache
def _register() -> None:
  lib = ctypes.cdll.LoadLibrary(str(build()))
  for target, symbol in TARGETS.values():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")


@functools.cache
def _loads() -> bool:
  try:
    _register()
  except (RuntimeError, OSError) as e:
    import logging
    logging.warning("arjax CPU decode attention unavailable, XLA serves it: %s", e)
    return False
  return True


def available() -> bool:
  """Whether the kernel serves this process: the default backend is CPU and the library builds and loads."""
  return jax.default_backend() == "cpu" and os.environ.get("ARJAX_CPU_KERNELS", "1") != "0" and _loads()


def decode_attention(q_BGMD, k_BGSD, v_BGSD, pos_BS, limit_BM, k_scale_BGS=None, v_scale_BGS=None):
  """out f32 [B, G, M, D]: query rows q (f32, already scaled) against cache slots k / v [B, G, S, D] (f32, bf16,
  or int8 with per-slot scales [B, G, S]); slot s holds sequence index pos_BS[b, s] (-1 empty) and row m sees
  0 <= pos <= limit_BM[b, m] (pos and limit may have batch 1). A row that sees no slot is zeros."""
  dtype = jnp.dtype(k_BGSD.dtype)
  if dtype not in TARGETS or v_BGSD.dtype != dtype:
    raise ValueError(f"decode_attention takes f32, bf16 or int8 caches, got k {k_BGSD.dtype}, v {v_BGSD.dtype}")
  if (k_scale_BGS is None) != (dtype != jnp.int8) or (k_scale_BGS is None) != (v_scale_BGS is None):
    raise ValueError("int8 caches need k_scale and v_scale [B, G, S]; float caches take none")
  _register()
  one = jnp.ones((1,), jnp.float32)
  scales = (one, one) if k_scale_BGS is None else (k_scale_BGS, v_scale_BGS)
  call = jax.ffi.ffi_call(TARGETS[dtype][0], jax.ShapeDtypeStruct(q_BGMD.shape, jnp.float32),
                          vmap_method="sequential")
  return call(q_BGMD.astype(jnp.float32), k_BGSD, scales[0].astype(jnp.float32), v_BGSD,
              scales[1].astype(jnp.float32), pos_BS.astype(jnp.int32), limit_BM.astype(jnp.int32))
