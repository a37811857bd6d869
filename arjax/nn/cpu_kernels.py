"""C++ kernels for XLA:CPU (the `.cc` files beside this one): compiled on first use, registered as XLA FFI targets.

Each library is built with the host's C++ compiler (`$CXX`, default g++; `-march=native`) into
`$ARJAX_KERNEL_CACHE` (default ~/.cache/arjax/kernels), keyed by its source, the shared headers, the compiler and
flags, jaxlib's version and the CPU's feature flags; concurrent builders each write a temporary file and rename
it. `load` says whether a library serves this process: False off CPU, without a compiler, or with
`ARJAX_CPU_KERNELS=0`, and the callers then use XLA.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax

HERE = pathlib.Path(__file__).parent
HEADERS = (HERE / "cpu_parallel.h", HERE / "cpu_tile.h")  # included by the kernel sources
FLAGS = ("-O3", "-march=native", "-std=c++17", "-fopenmp-simd", "-fassociative-math", "-fno-signed-zeros",
         "-fno-trapping-math", "-shared", "-fPIC")  # reassociation: reductions (a slot's dot) run as trees


@functools.cache
def cpu_flags() -> frozenset:
  """The CPU's feature flags (/proc/cpuinfo), e.g. 'avx512_vnni'; empty where unreadable."""
  try:
    with open("/proc/cpuinfo") as f:
      line = next((line for line in f if line.startswith("flags")), "")
  except OSError:
    return frozenset()
  return frozenset(line.partition(":")[2].split())


def library_path(source: pathlib.Path, compiler: str) -> pathlib.Path:
  """Where the library built from `source` for this compiler, jaxlib and CPU lives."""
  key = hashlib.sha256("\n".join([source.read_text(), *(h.read_text() for h in HEADERS), compiler, " ".join(FLAGS),
                                  jax.__version__, " ".join(sorted(cpu_flags())),
                                  platform.machine()]).encode()).hexdigest()[:16]
  root = os.environ.get("ARJAX_KERNEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "arjax", "kernels")
  return pathlib.Path(root) / f"{source.stem}-{key}.so"


def build(source: pathlib.Path) -> pathlib.Path:
  """Compiles `source` into its library (once per key)."""
  compiler = os.environ.get("CXX", "g++")
  if shutil.which(compiler) is None:
    raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set $CXX) to build {source.name}")
  path = library_path(source, compiler)
  if path.exists():
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
  os.close(fd)
  cmd = [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", f"-I{HERE}", str(source), "-o", tmp]
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode:
    os.unlink(tmp)
    raise RuntimeError(f"building {source.name} failed ({' '.join(cmd)}):\n{done.stderr[-4000:]}")
  os.replace(tmp, path)
  return path


@functools.cache
def register(source: pathlib.Path, targets: tuple[tuple[str, str], ...]) -> None:
  """Builds `source` and registers each (FFI target, handler symbol) for the CPU platform."""
  lib = ctypes.cdll.LoadLibrary(str(build(source)))
  for target, symbol in targets:
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")


@functools.cache
def _loads(source: pathlib.Path, targets: tuple[tuple[str, str], ...]) -> bool:
  try:
    register(source, targets)
  except (RuntimeError, OSError) as e:
    logging.warning("arjax CPU kernel %s unavailable, XLA serves it: %s", source.name, e)
    return False
  return True


def load(source: pathlib.Path, targets) -> bool:
  """Whether the kernels of `source` serve this process: the default backend is CPU, `ARJAX_CPU_KERNELS` is not
  0, and the library builds and loads (else one warning per library)."""
  return (jax.default_backend() == "cpu" and os.environ.get("ARJAX_CPU_KERNELS", "1") != "0"
          and _loads(source, tuple(targets)))
