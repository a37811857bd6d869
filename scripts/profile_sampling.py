"""Where a sampler spends its time on this machine: one traced call, XLA op time summed by op kind.

  JAX_PLATFORMS=cpu python scripts/profile_sampling.py [--config configs/imagenet256/var_d16.py] \
      [--compute-dtype auto] [--int8] [--batch 2] [--top 15] [--trace-dir /tmp/arjax_trace] [--by module]

Random weights (as scripts/bench_sampling.py), params prepared once, tokens only. The first call compiles, the second
is timed, and the third runs under `jax.profiler.trace`. The perfetto trace's per-op events (e.g. `ynn_fusion.31`:
XLA:CPU's matmul fusions) are summed by kind, and the top kinds are printed with their counts. `--by module` sums
them by the jax op each one came from instead (the optimised HLO's op_name, dumped to TRACE_DIR/hlo; `block7`
-> `blockN`, so the layers fold into one row): e.g. `transformer/blockN/mlp/gate/dot_general`.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_sampling  # noqa: E402
from arjax import host  # noqa: E402
from arjax.nn import quant  # noqa: E402
from arjax.paradigms import next_scale  # noqa: E402

RUNTIME = ("ThunkExecutor", "$", "SlinkyThreadPool", "end:", "PjitFunction", "CommonPjRt")


def op_names(hlo_dir: str, trace_dir: str) -> dict:
  """HLO instruction name -> its jax op_name (layer numbers folded to N), from the optimised module dumped under
  hlo_dir whose instruction names cover the most of the newest trace's events (the sampler's)."""
  paths = glob.glob(os.path.join(hlo_dir, "*cpu_after_optimizations.txt"))
  if not paths:
    raise FileNotFoundError(f"no optimised HLO dumped under {hlo_dir}")
  events = collections.Counter(e["name"] for e in _events(trace_dir) if e.get("ph") == "X")
  best, best_hits = {}, -1
  for path in paths:
    names = {}
    with open(path) as f:
      for line in f:
        m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(', line)
        if m:  # instructions without an op_name (XLA drops some, e.g. on batched dots): opcode and shape
          op = re.search(r'op_name="([^"]+)"', line)
          op = op.group(1).split("/body/")[-1] if op else f"{m.group(3)} {m.group(2).split('{')[0]}"
          names.setdefault(m.group(1), re.sub(r"block\d+", "blockN", op))
    hits = sum(n for name, n in events.items() if name in names)
    if hits > best_hits:
      best, best_hits = names, hits
  return best


def _events(trace_dir: str) -> list:
  """The events of the newest perfetto trace under trace_dir."""
  paths = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True)
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    events = json.load(f)
  return events["traceEvents"] if isinstance(events, dict) else events


def op_kinds(trace_dir: str, names: dict | None = None) -> tuple[collections.Counter, collections.Counter]:
  """(microseconds, count) per op kind (the event name without its .N suffix; with `names`, the op_name of the
  event's HLO instruction) of the newest perfetto trace."""
  total, count = collections.Counter(), collections.Counter()
  for e in _events(trace_dir):
    if e.get("ph") == "X" and not e["name"].startswith(RUNTIME):
      kind = re.sub(r"\.\d+$", "", e["name"])
      if names is not None:
        kind = names.get(e["name"], f"(other) {kind}")
      total[kind] += e.get("dur", 0)
      count[kind] += 1
  return total, count


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=os.path.join(bench_sampling.ROOT, bench_sampling.CONFIGS["var"]))
  p.add_argument("--compute-dtype", default="auto")
  p.add_argument("--int8", action="store_true")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--top", type=int, default=15)
  p.add_argument("--trace-dir", default="/tmp/arjax_trace")
  p.add_argument("--by", choices=("kind", "module"), default="kind", help="sum op time by HLO op kind or jax op")
  a = p.parse_args()
  hlo_dir = os.path.join(a.trace_dir, "hlo")
  if a.by == "module":  # read when jax starts its backend, i.e. at the first call below
    shutil.rmtree(hlo_dir, ignore_errors=True)
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={hlo_dir} --xla_dump_hlo_as_text"
  cfg, model, params = bench_sampling.build(a.config)
  extra = next_scale.SAMPLE_OPTIONS if isinstance(model, next_scale.NextScale) else None
  fn = bench_sampling.token_sampler(model, extra)
  opts = dict(cfg.sample, compute_dtype=a.compute_dtype, int8=a.int8)
  params = jax.jit(quant.for_inference, static_argnums=(1, 2, 3))(params, a.compute_dtype, a.int8, opts["int8_head"])
  cond = {"label": jnp.arange(a.batch, dtype=jnp.int32) % model.num_classes}
  run = lambda: jax.block_until_ready(fn(params, cond, jax.random.PRNGKey(0), **opts))
  first, seconds = bench_sampling.time_call(run, 1)
  with jax.profiler.trace(a.trace_dir, create_perfetto_trace=True):
    run()
  total, count = op_kinds(a.trace_dir, op_names(hlo_dir, a.trace_dir) if a.by == "module" else None)
  print(f"{os.path.basename(a.config)} tokens, {a.compute_dtype}{' int8' if a.int8 else ''}, batch {a.batch}: "
        f"{seconds:.2f} s per call (first {first:.1f} s); op time {sum(total.values()) / 1e6:.2f} s; "
        f"{host.describe()}")
  for kind, us in total.most_common(a.top):
    print(f"{us / 1e3:9.1f} ms  x{count[kind]:5d}  {kind}")


if __name__ == "__main__":
  main()
