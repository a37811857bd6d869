"""TokenBridge figures on `shapes` (docs/tokenbridge.md); scripts/tokenbridge_figures.sh runs the whole set.

  python scripts/tokenbridge_figures.py recon --vae runs/vae --out docs/tokenbridge
      held-out reconstruction PSNR and judge-space FID of the continuous VAE and of its 256 / 64 / 16-level
      dimwise quantisations, the per-channel spectral centroids and the data-derived channel order; recon.png
  python scripts/tokenbridge_figures.py sample runs/tb runs/mar_diffusion ... --out docs/tokenbridge
      per run: judge class accuracy of 512 samples (the training run's final eval, from metrics.jsonl), sampling
      time per image split into backbone and head (the same sampler with a head that returns zeros gives the
      backbone's share); samples.png: two rows of samples per run (columns: the 8 classes)
Timings are wall-clock after a warm-up call, on whatever device JAX uses; print them with the machine's load.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from arjax import config as config_lib
from arjax import registry
from arjax.data import pipeline
from arjax.eval import evaluators
from arjax.eval import grid
from arjax.eval import metrics
from arjax.train import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "configs", "shapes", "tokenbridge.py") + ":tokenizer,levels={}"
LEVELS = (256, 64, 16)


def load(source, n: int):
  """The first n examples of a random-access source as float images [n, H, W, 3] in [-1, 1]."""
  return np.stack([pipeline.to_model_example(source[i])["image"] for i in range(n)])


def batched(fn, x, batch: int = 256):
  return np.concatenate([np.asarray(fn(x[i:i + batch])) for i in range(0, len(x), batch)])


def recon(args):
  """Reconstruction table (markdown), recon.png and recon.json under args.out."""
  from arjax.tokenizers import dimwise
  spec = TOKENIZER + (f",{args.preset}" if args.preset else "")
  toks = {levels: registry.resolve("dimwise")(config_lib.load_config(spec.format(levels)).model) for levels in LEVELS}
  vae = toks[LEVELS[0]].vae
  params = checkpoint.load_params(os.path.join(args.vae, "checkpoints"))
  data_cfg = toks[LEVELS[0]].vae_config.data
  images = load(pipeline.make_source(data_cfg, "test", args.n), args.n)
  net = evaluators.load_feature_net("shapes_judge", data_cfg=data_cfg)
  judge_stats = lambda x: metrics.feature_stats(batched(lambda b: net.fn(b)["pool"], x))
  real = judge_stats(images)
  latents = batched(jax.jit(lambda x: vae.encode(params, x)), images)
  decode = jax.jit(lambda z: vae.decode(params, z))
  rows, recs = [], {"continuous": batched(decode, latents)}
  for levels, tok in toks.items():
    grid_latents = dimwise.dequantize(dimwise.quantize(latents, *tok.grid_args), *tok.grid_args)
    recs[f"{levels} levels"] = batched(decode, grid_latents)
  lo, hi = toks[LEVELS[0]].x_min, toks[LEVELS[0]].x_max
  for name, rec in recs.items():
    rows.append(dict(tokens=name, psnr=float(metrics.psnr(jnp.asarray(rec), jnp.asarray(images))),
                     fid=metrics.frechet_distance(*judge_stats(rec), *real)))
  centroids = dimwise.spectral_centroids(latents)
  clamped = float(np.mean((latents < lo) | (latents > hi)))
  out = dict(n=args.n, rows=rows, latent_std=float(np.std(latents)), clamped=clamped, centroids=centroids.tolist(),
             order=[int(c) for c in np.argsort(centroids, kind="stable")])
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "recon.json"), "w") as f:
    json.dump(out, f, indent=1)
  strip = np.concatenate([images[:12]] + [rec[:12] for rec in recs.values()])  # rows: real, continuous, 256, 64, 16
  grid.save_grid(strip, os.path.join(args.out, "recon.png"), ncols=12)
  print(f"{args.n} held-out images; latents std {out['latent_std']:.3f}, {100 * out['clamped']:.3f}% outside "
        f"[{lo}, {hi}]; spectral centroids {np.round(centroids, 4).tolist()} -> order {out['order']}")
  print("| tokens | PSNR (dB) | judge FID |\n|---|---|---|")
  for r in rows:
    print(f"| {r['tokens']} | {r['psnr']:.2f} | {r['fid']:.2f} |")


class ZeroHead:
  """Stands in for a head: samples zeros (what is left of the sampling time is the backbone's)."""

  def __init__(self, token_dim):
    self.token_dim = token_dim

  def sample(self, params, z_ND, rng, *, guide_scale=None, **_):
    from arjax import heads
    return jnp.zeros((heads.rows(z_ND, guide_scale), self.token_dim))


def seconds(fn, repeats: int = 3) -> float:
  """Best wall-clock time of fn() (blocked) over `repeats` calls after a warm-up call."""
  jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return best


def sample(args):
  """Accuracy / timing table (markdown), sample.json and samples.png (two rows of class-cycled samples per run, in
  the order given) under args.out."""
  print(f"device: {jax.devices()[0].device_kind}; load average {os.getloadavg()}")
  print("| run | head | train steps | final loss | judge acc | s / image | backbone | head |\n" + "|---" * 8 + "|")
  rows, grids = [], []
  for workdir in args.runs:
    name = os.path.basename(os.path.normpath(workdir))
    with open(os.path.join(workdir, "config.json")) as f:
      cfg = ml_collections.ConfigDict(json.load(f))
    model = registry.build_model(cfg)
    params = checkpoint.load_params(os.path.join(workdir, "checkpoints"))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      logged = [json.loads(line) for line in f]
    acc = [m["judge/accuracy"] for m in logged if "judge/accuracy" in m]
    loss = [m for m in logged if "loss" in m][-1]
    cond = {"label": jnp.arange(args.batch, dtype=jnp.int32) % model.num_classes}
    run = lambda: model.sample(params, cond, jax.random.PRNGKey(0), **cfg.sample)
    images = np.asarray(run())
    total = seconds(run) / args.batch
    headless = copy.copy(model)  # a new object: the jitted sampler is keyed on the model
    headless.head = ZeroHead(model.token_dim)
    backbone = seconds(lambda: headless.sample(params, cond, jax.random.PRNGKey(0), **cfg.sample)) / args.batch
    kind = cfg.model.head.kind + (f" ({cfg.model.head.order} order)" if cfg.model.head.kind == "dimwise" else
                                  f" {cfg.model.head.steps} steps")
    row = dict(run=name, head=kind, steps=loss["step"], loss=loss["loss"], judge_acc=acc[-1] if acc else None,
               s_per_image=total, backbone=backbone, head_s=total - backbone)
    rows.append(row)
    grids.append(images[:16])
    acc_s = "-" if row["judge_acc"] is None else f"{100 * row['judge_acc']:.1f}%"
    print(f"| {name} | {kind} | {row['steps']} | {row['loss']:.4f} | {acc_s} | {1e3 * total:.2f} ms | "
          f"{1e3 * backbone:.2f} ms | {1e3 * (total - backbone):.2f} ms |")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "sample.json"), "w") as f:
    json.dump(rows, f, indent=1)
  grid.save_grid(np.concatenate(grids), os.path.join(args.out, "samples.png"), ncols=8)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="cmd", required=True)
  r = sub.add_parser("recon")
  r.add_argument("--vae", required=True)
  r.add_argument("--n", type=int, default=1024)
  r.add_argument("--out", default="docs/tokenbridge")
  r.add_argument("--preset", default="", help="the VAE config's preset (smoke: for a smoke-test VAE)")
  s = sub.add_parser("sample")
  s.add_argument("runs", nargs="+")
  s.add_argument("--batch", type=int, default=64)
  s.add_argument("--out", default="docs/tokenbridge")
  args = parser.parse_args()
  {"recon": recon, "sample": sample}[args.cmd](args)


if __name__ == "__main__":
  main()
