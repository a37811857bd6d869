"""Facts about the host process that decide CPU speed: which memory allocator it runs with, whether the CPU has
AMX (which decides whether bf16 products are fast), and the load.

XLA:CPU allocates every call's output and temporary buffers afresh. glibc's malloc serves buffers above 32 MiB
with a fresh mmap and unmaps them on free, so each call page-faults its big buffers in again, one 4 KiB page at a
time (a 64 MiB elementwise op: 27 ms with glibc, 11 ms with tcmalloc on the CI machine). tcmalloc keeps freed
memory mapped. `scripts/_env.sh` preloads it where the system has it (Debian: libtcmalloc-minimal4);
docs/inference_speed.md has the figures.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

ALLOCATORS = {"libtcmalloc": "tcmalloc", "libjemalloc": "jemalloc"}
LIBRARIES = {"tcmalloc": "libtcmalloc_minimal.so.4", "jemalloc": "libjemalloc.so.2"}  # sonames, as ldconfig lists them


def allocator(maps: str | None = None) -> str:
  """'tcmalloc', 'jemalloc' or 'glibc malloc': the allocator mapped into this process (`maps`: the text of
  /proc/self/maps; read when None)."""
  if maps is None:
    try:
      with open("/proc/self/maps") as f:
        maps = f.read()
    except OSError:
      return "unknown (no /proc/self/maps)"
  libs = {os.path.basename(line.split()[-1]) for line in maps.splitlines() if "/" in line}
  for prefix, name in ALLOCATORS.items():
    if any(lib.startswith(prefix) for lib in libs):
      return name
  return "glibc malloc"


def library(name: str) -> str:
  """The path of allocator `name`'s shared library (from `ldconfig -p`); raises naming the Debian package if absent."""
  if name not in LIBRARIES:
    raise ValueError(f"allocator must be one of {sorted(LIBRARIES)} or 'glibc', got {name!r}")
  try:
    out = subprocess.run([shutil.which("ldconfig") or "/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
  except OSError:  # no ldconfig: nothing can be looked up
    out = ""
  paths = [line.split()[-1] for line in out.splitlines() if line.split()[:1] == [LIBRARIES[name]]]
  if not paths:
    package = {"tcmalloc": "libtcmalloc-minimal4", "jemalloc": "libjemalloc2"}[name]
    raise FileNotFoundError(f"{LIBRARIES[name]} is not installed (Debian: apt-get install {package})")
  return paths[0]


def run_with(name: str):
  """Re-executes this Python process with allocator `name` ('tcmalloc', 'jemalloc' or 'glibc') unless it already
  runs with it. Returns only when it does."""
  if allocator() == (name if name != "glibc" else "glibc malloc"):
    return
  env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
  if name != "glibc":
    env["LD_PRELOAD"] = library(name)
  sys.stdout.flush()
  os.execve(sys.executable, [sys.executable, *sys.argv], env)


def cpu_flags(cpuinfo: str | None = None) -> frozenset:
  """The CPU's feature flags (`cpuinfo`: the text of /proc/cpuinfo; read when None; empty where unreadable)."""
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    except OSError:
      return frozenset()
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(":")
    if key.strip() in ("flags", "Features"):
      return frozenset(value.split())
  return frozenset()


def has_amx(flags: frozenset | None = None) -> bool:
  """Whether the CPU has AMX bf16 tiles: the only x86 unit on which XLA:CPU's bf16 products beat f32 (AVX512-BF16
  alone is slower than f32 there; docs/inference_speed.md, session 11)."""
  return "amx_bf16" in (cpu_flags() if flags is None else flags)


def amx_label() -> str:
  """'AMX' or 'no AMX', for benchmark headers (which precision is fast depends on it)."""
  return "AMX" if has_amx() else "no AMX"


def load() -> float:
  """The 1-minute load average."""
  return os.getloadavg()[0]


def describe() -> str:
  """One line for benchmark headers: device, cpus (with or without AMX), allocator, load."""
  import jax
  amx = f" ({amx_label()})" if jax.default_backend() == "cpu" else ""
  return (f"device: {jax.devices()[0].device_kind}, {os.cpu_count()} cpus{amx}, allocator: {allocator()}, "
          f"load {load():.2f}")
