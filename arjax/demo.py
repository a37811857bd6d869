"""The demo: VQ tokenizer + class-conditional next-token AR on `shapes`, sampled and judged.

  python -m arjax.demo --workdir runs/demo      (what scripts/demo.sh runs)
Writes WORKDIR/samples.png (one row per class), WORKDIR/metrics.json and TensorBoard logs under
WORKDIR/{vq,next_token}/tb. Re-running resumes finished stages from their checkpoints.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from arjax import config as config_lib
from arjax.data import pipeline
from arjax.eval import grid, judge
from arjax.eval import metrics as metrics_lib
from arjax.main import run

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "shapes")


def real_test_set(data_cfg, n: int):
  """n held-out real images and labels (numpy)."""
  batches = list(pipeline.iterate_eval(data_cfg, "test", n))
  return (np.concatenate([b["image"] for b in batches])[:n], np.concatenate([b["label"] for b in batches])[:n])


def tokenizer_metrics(model, params, images):
  """Reconstruction PSNR (dB, [0,1] scale) and, for a VQ, the fraction of codes used on `images`."""
  tokens = jax.jit(model.encode)(params, images)
  rec = jax.jit(model.decode)(params, tokens)
  out = dict(psnr_db=float(metrics_lib.psnr(rec, images)))
  if model.vocab_size:
    out["codebook_usage"] = len(np.unique(np.asarray(tokens))) / model.vocab_size
  return out


def fid(judge_params, images_a, images_b) -> float:
  """Frechet distance between two image sets in the judge's feature space (the offline feature net)."""
  stats = [metrics_lib.feature_stats(np.asarray(judge.features(judge_params, x), np.float64))
           for x in (images_a, images_b)]
  return float(metrics_lib.frechet_distance(*stats[0], *stats[1]))


def main(workdir: str, samples_per_class: int = 64, grid_per_class: int = 8):
  t0 = time.time()
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/arjax_jax"))
  vq_cfg = config_lib.load_config(os.path.join(CONFIGS, "vq.py"))
  print(f"[1/4] training the VQ tokenizer -> {workdir}/vq", flush=True)
  vq_state, _ = run(vq_cfg, os.path.join(workdir, "vq"))
  nt_cfg = config_lib.load_config(os.path.join(CONFIGS, "next_token.py"))
  nt_cfg.tokenizer.workdir = os.path.join(workdir, "vq")
  print(f"[2/4] training the next-token model -> {workdir}/next_token", flush=True)
  nt_state, nt_metrics = run(nt_cfg, os.path.join(workdir, "next_token"))
  print(f"[3/4] training (or loading) the judge -> {workdir}/judge.npz", flush=True)
  judge_params = judge.load_or_train(os.path.join(workdir, "judge.npz"), colours=tuple(nt_cfg.data.colours))
  images, labels = real_test_set(nt_cfg.data, 1024)
  train_images = np.concatenate([b["image"] for b in pipeline.iterate_eval(nt_cfg.data, "train", 2048)])
  print("[4/4] sampling and judging", flush=True)
  from arjax import registry
  model = registry.build_model(nt_cfg)
  n_cls = model.num_classes
  sample_labels = jnp.repeat(jnp.arange(n_cls), samples_per_class)
  samples = model.sample(nt_state.ema_params, {"label": sample_labels}, jax.random.PRNGKey(1234), **nt_cfg.sample)
  samples = np.asarray(samples)
  pred = judge.predict(judge_params, samples)["label"]
  n_fid = min(len(samples), len(images))
  metrics = dict(
      sample_class_accuracy=float(np.mean(np.asarray(pred) == np.asarray(sample_labels))),
      judge_accuracy_real=float(judge.accuracy(judge_params, images, labels)),
      fid_judge_features=dict(samples_vs_train=fid(judge_params, samples[:n_fid], train_images),
                              heldout_real_vs_train=fid(judge_params, images[:n_fid], train_images),
                              num_images=n_fid, reference_images=len(train_images)),
      tokenizer=tokenizer_metrics(model.tokenizer, model.tokenizer_params, jnp.asarray(images[:512])),
      next_token_final=nt_metrics, num_samples=int(len(samples)), sample_opts=dict(nt_cfg.sample),
      wall_time_s=round(time.time() - t0, 1))
  per_class = samples.reshape(n_cls, samples_per_class, *samples.shape[1:])[:, :grid_per_class]
  grid.save_grid(per_class.reshape(-1, *samples.shape[1:]), os.path.join(workdir, "samples.png"),
                 ncols=grid_per_class, scale=4)
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=2)
  print(json.dumps(metrics, indent=2))
  print(f"outputs: {workdir}/samples.png  {workdir}/metrics.json  tensorboard --logdir {workdir}")
  return metrics


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/demo")
  parser.add_argument("--samples_per_class", type=int, default=64, help="samples judged per class")
  args = parser.parse_args()
  main(args.workdir, args.samples_per_class)
