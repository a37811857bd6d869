"""Where a sampler spends its time on this machine: one traced call, XLA op time summed by op kind.

  JAX_PLATFORMS=cpu python scripts/profile_sampling.py [--config configs/imagenet256/var_d16.py] \
      [--compute-dtype bfloat16] [--int8] [--batch 2] [--top 15] [--trace-dir /tmp/arjax_trace]

Random weights (as scripts/bench_sampling.py), params prepared once, tokens only. The first call compiles, the second
is timed, and the third runs under `jax.profiler.trace`. The perfetto trace's per-op events (e.g. `ynn_fusion.31`:
XLA:CPU's matmul fusions) are summed by kind, and the top kinds are printed with their counts.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_sampling  # noqa: E402
from arjax.nn import quant  # noqa: E402
from arjax.paradigms import next_scale  # noqa: E402

RUNTIME = ("ThunkExecutor", "$", "SlinkyThreadPool", "end:", "PjitFunction", "CommonPjRt")


def op_kinds(trace_dir: str) -> tuple[collections.Counter, collections.Counter]:
  """(microseconds, count) per op kind (the event name without its .N suffix) of the newest perfetto trace."""
  paths = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True)
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(RUNTIME):
      kind = re.sub(r"\.\d+$", "", e["name"])
      total[kind] += e.get("dur", 0)
      count[kind] += 1
  return total, count


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=os.path.join(bench_sampling.ROOT, bench_sampling.CONFIGS["var"]))
  p.add_argument("--compute-dtype", default="bfloat16")
  p.add_argument("--int8", action="store_true")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--top", type=int, default=15)
  p.add_argument("--trace-dir", default="/tmp/arjax_trace")
  a = p.parse_args()
  cfg, model, params = bench_sampling.build(a.config)
  extra = next_scale.SAMPLE_OPTIONS if isinstance(model, next_scale.NextScale) else None
  fn = bench_sampling.token_sampler(model, extra)
  params = jax.jit(quant.for_inference, static_argnums=(1, 2))(params, a.compute_dtype, a.int8)
  cond = {"label": jnp.arange(a.batch, dtype=jnp.int32) % model.num_classes}
  opts = dict(cfg.sample, compute_dtype=a.compute_dtype, int8=a.int8)
  run = lambda: jax.block_until_ready(fn(params, cond, jax.random.PRNGKey(0), **opts))
  first, seconds = bench_sampling.time_call(run, 1)
  with jax.profiler.trace(a.trace_dir, create_perfetto_trace=True):
    run()
  total, count = op_kinds(a.trace_dir)
  print(f"{os.path.basename(a.config)} tokens, {a.compute_dtype}{' int8' if a.int8 else ''}, batch {a.batch}: "
        f"{seconds:.2f} s per call (first {first:.1f} s); op time {sum(total.values()) / 1e6:.2f} s; "
        f"load {bench_sampling.load():.2f}")
  for kind, us in total.most_common(a.top):
    print(f"{us / 1e3:9.1f} ms  x{count[kind]:5d}  {kind}")


if __name__ == "__main__":
  main()
