"""Speculative decoding of raster next-token models, side by side in one run: plain / SJD / drafter / +LANTERN.

Part `shapes` (trained models): the shapes next-token model (runs/nt) with the drafter preset (runs/speculative_drafter)
on the shapes VQ (runs/vq): mean accepted tokens per target pass, NFE, drafter passes, loop rounds, wall-clock per
method (every method timed in the same process, batch by batch in alternating order) and its speedup over plain,
judge accuracy and judge-FID of --num samples (labels i % 8). Writes a table (markdown + json) and one sample grid
(a row per method) under --out.
Part `llamagen` (speed only): LlamaGen-B (configs/imagenet256/llamagen_b.py) with random weights and a random
head (a random model's acceptance means nothing): seconds per plain step and per SJD round, the acceptance length
at which SJD breaks even, and the measured wall-clock of each method.

  python scripts/bench_speculative.py --part shapes --target runs/nt --drafter runs/speculative_drafter \
      --vq runs/vq --num 512 --out runs/speculative_bench
  python scripts/bench_speculative.py --part llamagen --out runs/speculative_bench
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from arjax import config as config_lib  # noqa: E402
from arjax import registry  # noqa: E402
from arjax.eval import evaluators, grid, judge, metrics  # noqa: E402
from arjax.sampling import speculative  # noqa: E402
from arjax.train import checkpoint  # noqa: E402


def load(preset: str, workdir: str, vq: str):
  """(model, EMA params) of configs/shapes/next_token.py:<preset> trained in `workdir` over the VQ in `vq`."""
  cfg = config_lib.load_config(os.path.join(ROOT, "configs/shapes/next_token.py") + (f":{preset}" if preset else ""))
  cfg.tokenizer.workdir = vq
  return cfg, registry.build_model(cfg), checkpoint.load_params(os.path.join(workdir, "checkpoints"))


def methods(drafter, deltas, sjd_window, draft_window, lantern_k):
  """name -> decode options."""
  out = {"plain": dict(decoding="plain")}
  sjd = dict(decoding="sjd", window=sjd_window)
  draft = None if drafter is None else dict(decoding="draft", window=draft_window, drafter=drafter)
  out["sjd"] = sjd
  if draft:
    out["draft"] = draft
  for d in deltas:
    out[f"sjd+lantern{d}"] = dict(sjd, lantern_delta=d, lantern_k=lantern_k)
    if draft:
      out[f"draft+lantern{d}"] = dict(draft, lantern_delta=d, lantern_k=lantern_k)
  return out


def decode_all(names, run, n_batches):
  """name -> (per-batch outputs, seconds over all batches): one warm-up call per method (compile), then batch by batch
  with the methods alternating, so drifting machine load hits every method alike."""
  for name in names:
    jax.block_until_ready(run(name, 0))
  outs, seconds = {n: [] for n in names}, {n: 0.0 for n in names}
  for i in range(n_batches):
    for name in names:
      t = time.perf_counter()
      outs[name].append(jax.block_until_ready(run(name, i)))
      seconds[name] += time.perf_counter() - t
  return outs, seconds


def load_note():
  return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs ({jax.devices()[0].device_kind})"


def shapes_part(a, out):
  cfg, model, params = load("", a.target, a.vq)
  _, dmodel, dparams = load("drafter", a.drafter, a.vq)
  base = dict(cfg.sample)
  table = methods(speculative.Drafter(dmodel, dparams), a.deltas, a.sjd_window, a.draft_window, a.lantern_k)
  labels = np.arange(a.num) % model.num_classes
  judge_params = judge.load_or_train(evaluators.DEFAULT_JUDGE_PATH)
  real, _ = judge.real_data("test", a.num)
  real_stats = metrics.feature_stats(judge.features(judge_params, real.astype(np.float32) / 127.5 - 1))
  print(f"shapes: target {count(params)} params, drafter {count(dparams)}; {a.num} samples, options {base}", flush=True)

  def run(name, i):
    batch = jnp.asarray(labels[i * a.batch:(i + 1) * a.batch])
    return model.decode(params, {"label": batch}, jax.random.PRNGKey(i), **base, **table[name])

  before = load_note()
  outs, seconds = decode_all(list(table), run, a.num // a.batch)
  rows, grids = [], []
  for name in table:
    tokens = np.concatenate([np.asarray(t) for t, _ in outs[name]])
    st = {k: np.concatenate([np.asarray(s[k]) for _, s in outs[name]]) for k in ("nfe", "tokens_per_step", "draft_nfe")}
    rounds = [int(s["rounds"]) for _, s in outs[name]]
    images = np.asarray(model.tokenizer.decode(model.tokenizer_params, jnp.asarray(tokens).reshape(-1, *model.grid)))
    fid = metrics.frechet_distance(*metrics.feature_stats(judge.features(judge_params, images)), *real_stats)
    rows.append(dict(method=name, tokens_per_step=float(st["tokens_per_step"].mean()), nfe=float(st["nfe"].mean()),
                     draft_nfe=float(st["draft_nfe"].mean()), rounds=float(np.mean(rounds)),
                     seconds=seconds[name], speedup=seconds["plain"] / seconds[name],
                     judge_accuracy=judge.accuracy(judge_params, images, labels[:len(images)]), judge_fid=float(fid)))
    print(json.dumps(rows[-1]), flush=True)
    grids.append(images[:16])
  grid.save_grid(np.concatenate(grids), os.path.join(out, "shapes_samples.png"), ncols=16, scale=2)
  note = (f"batch {a.batch}, seconds summed over {a.num // a.batch} batches after one compile call per method "
          f"({before} before, {load_note()} after); SJD window {a.sjd_window}, "
          f"drafter window {a.draft_window}, lantern_k {a.lantern_k}; rows top to bottom in shapes_samples.png: "
          + ", ".join(table))
  write(out, "shapes", rows, note)


def count(params):
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))


def llamagen_part(a, out):
  import bench_sampling
  cfg, model, params = bench_sampling.build(os.path.join(ROOT, "configs/imagenet256/llamagen_b.py"))
  # the initial head is zero (uniform logits: every SJD draft would be accepted); a random head gives peaked logits
  kernel = params["head"]["kernel"]
  params = dict(params, head=dict(params["head"], kernel=0.2 * jax.random.normal(jax.random.PRNGKey(1), kernel.shape)))
  base = dict(cfg.sample)
  table = methods(None, a.deltas[-1:], a.sjd_window, a.draft_window, a.lantern_k)
  labels = jnp.arange(a.llamagen_batch) % model.num_classes
  print(f"llamagen-b: {count(params)} params (random), batch {a.llamagen_batch}, options {base}", flush=True)
  run = lambda name, i: model.decode(params, {"label": labels}, jax.random.PRNGKey(i), **base, **table[name])
  before = load_note()
  outs, seconds = decode_all(list(table), run, a.repeats)
  rows = []
  for name in table:
    st = jax.tree.map(np.asarray, outs[name][-1][1])
    per_round = seconds[name] / a.repeats / float(st["rounds"])
    plain_step = seconds["plain"] / a.repeats / model.num_tokens
    rows.append(dict(method=name, tokens_per_step=float(st["tokens_per_step"].mean()), nfe=float(st["nfe"].mean()),
                     rounds=int(st["rounds"]), seconds=seconds[name] / a.repeats,
                     speedup=seconds["plain"] / seconds[name], seconds_per_round=per_round,
                     break_even_tokens_per_step=per_round / plain_step))
    print(json.dumps(rows[-1]), flush=True)
  write(out, "llamagen", rows, f"random weights, speed only; {before} before timing, {load_note()} after; "
        f"SJD window {a.sjd_window}")


def write(out, part, rows, note):
  with open(os.path.join(out, f"{part}.json"), "w") as f:
    json.dump(dict(rows=rows, note=note), f, indent=1)
  keys = list(rows[0])
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  lines += ["| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |"
            for r in rows]
  with open(os.path.join(out, f"{part}.md"), "w") as f:
    f.write("\n".join(lines) + f"\n\n{note}\n")
  print("\n".join(lines) + f"\n{note}", flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--part", choices=("shapes", "llamagen", "both"), default="both")
  p.add_argument("--target", default="runs/nt")
  p.add_argument("--drafter", default="runs/speculative_drafter")
  p.add_argument("--vq", default="runs/vq")
  p.add_argument("--num", type=int, default=512, help="samples per method for the judge")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--llamagen_batch", type=int, default=1)
  p.add_argument("--deltas", type=lambda s: [float(x) for x in s.split(",")], default=[0.05, 0.1, 0.2])
  p.add_argument("--sjd_window", type=int, default=8)
  p.add_argument("--draft_window", type=int, default=4)
  p.add_argument("--lantern_k", type=int, default=16)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--out", default="runs/speculative_bench")
  a = p.parse_args()
  os.makedirs(a.out, exist_ok=True)
  if a.part in ("shapes", "both"):
    shapes_part(a, a.out)
  if a.part in ("llamagen", "both"):
    llamagen_part(a, a.out)


if __name__ == "__main__":
  main()
