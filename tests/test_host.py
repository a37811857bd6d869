"""arjax.host: which allocator a process runs with; scripts/_tcmalloc.sh, which preloads tcmalloc."""
import os
import subprocess
import sys

import pytest

from arjax import host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAPS = """\
7f0000000000-7f0000001000 r--p 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000002000-7f0000003000 r-xp 00000000 00:00 0 [vdso]
7f0000004000-7f0000005000 rw-p 00000000 00:00 0
"""


def test_allocator_from_maps():
  assert host.allocator(MAPS) == "glibc malloc"
  tc = MAPS + "7f1-7f2 r-xp 00000000 08:01 9 /lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n"
  assert host.allocator(tc) == "tcmalloc"
  je = MAPS + "7f1-7f2 r-xp 00000000 08:01 9 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n"
  assert host.allocator(je) == "jemalloc"
  # a folder that merely carries the name is not the library
  assert host.allocator(MAPS + "7f1-7f2 r--p 0 08:01 9 /data/libtcmalloc_notes/x.txt\n") == "glibc malloc"


CPUINFO = """\
processor\t: 0
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni
"""


def test_cpu_flags_and_amx_from_cpuinfo():
  flags = host.cpu_flags(CPUINFO)
  assert {"avx512_bf16", "avx512_vnni"} <= flags and not host.has_amx(flags)
  assert host.has_amx(host.cpu_flags(CPUINFO.replace("avx512_vnni", "avx512_vnni amx_bf16 amx_tile")))
  assert host.cpu_flags("processor : 0\n") == frozenset()  # no flags line (e.g. a sandbox): nothing assumed


def _env(**over):
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ARJAX_TCMALLOC")}
  return dict(env, **over)


def _allocator_in_child(env, before="", script_dir=None):
  """host.allocator() as a child process reports it, after `before` (a script file when given a folder, as
  host.run_with re-executes sys.argv)."""
  code = f"from arjax import host\n{before}\nprint(host.allocator())\n"
  args = ["-c", code]
  if script_dir is not None:
    args = [os.path.join(script_dir, "child.py")]
    with open(args[0], "w") as f:
      f.write(code)
  out = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
  return out.stdout.strip()


def _preload_after_sourcing(env):
  """LD_PRELOAD as scripts/_tcmalloc.sh leaves it."""
  out = subprocess.run(["bash", "-c", 'source scripts/_tcmalloc.sh && echo "[$LD_PRELOAD]"'], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=True)
  return out.stdout.strip()[1:-1]


def _tcmalloc_path():
  try:
    return host.library("tcmalloc")
  except FileNotFoundError:
    return None


def test_plain_process_reports_glibc():
  assert _allocator_in_child(_env()) == "glibc malloc"


@pytest.mark.skipif(_tcmalloc_path() is None, reason="libtcmalloc-minimal4 is not installed on this machine")
def test_tcmalloc_sh_preloads_it_unless_turned_off():
  preload = _preload_after_sourcing(_env())
  assert preload == _tcmalloc_path()
  assert _allocator_in_child(_env(LD_PRELOAD=preload)) == "tcmalloc"
  assert _preload_after_sourcing(_env(ARJAX_TCMALLOC="0")) == ""
  assert _preload_after_sourcing(_env(LD_PRELOAD="/x/other.so")) == "/x/other.so"  # a caller's preload is kept


@pytest.mark.skipif(_tcmalloc_path() is None, reason="libtcmalloc-minimal4 is not installed on this machine")
def test_run_with_reexecutes_under_the_allocator(tmp_path):
  assert _allocator_in_child(_env(), "host.run_with('tcmalloc')", tmp_path) == "tcmalloc"
  assert _allocator_in_child(_env(LD_PRELOAD=_tcmalloc_path()), "host.run_with('glibc')", tmp_path) == "glibc malloc"


def test_unknown_allocator_is_one_clear_error():
  with pytest.raises(ValueError, match="allocator must be one of"):
    host.library("mimalloc")
