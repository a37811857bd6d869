"""Judge accuracy of one trained run's samples in each inference precision of bench_sampling.MODES (f32 / bf16 /
int8 / int8 with an int8 KV cache; the rest of int8 in the 'auto' compute dtype: bf16 with AMX, else f32), same
seeds.

  python scripts/precision_quality.py --workdir runs/nt [--num_samples 512]

The run's own config (WORKDIR/config.json) and EMA params; labels cycle through the classes; the offline shapes
judge (arjax.eval) classifies the samples; also prints the fraction of images whose judged class equals that of
the f32 sample drawn with the same seed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arjax import registry  # noqa: E402
from arjax.eval import evaluators, judge  # noqa: E402
from arjax.train import checkpoint  # noqa: E402
from bench_sampling import MODES  # noqa: E402  (f32, bf16, int8 with the rest in 'auto')



def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--workdir", required=True)
  p.add_argument("--num_samples", type=int, default=512)
  p.add_argument("--batch", type=int, default=128)
  a = p.parse_args()
  with open(os.path.join(a.workdir, "config.json")) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  model = registry.build_model(cfg)
  params = checkpoint.load_params(os.path.join(a.workdir, "checkpoints"))
  judge_params = judge.load_or_train(evaluators.DEFAULT_JUDGE_PATH, colours=tuple(cfg.data.colours),
                                     image_size=cfg.data.image_size)
  labels = np.arange(a.num_samples) % model.num_classes
  classes = {}
  for mode, prec in MODES.items():
    t, images = time.perf_counter(), []
    for i in range(0, a.num_samples, a.batch):
      cond = {"label": jnp.asarray(labels[i:i + a.batch], jnp.int32)}
      images.append(np.asarray(model.sample(params, cond, jax.random.PRNGKey(i), **dict(cfg.sample, **prec))))
    images = np.concatenate(images)
    classes[mode] = np.asarray(judge.predict(judge_params, images)["label"])
    acc = float((classes[mode] == labels).mean())
    same = float((classes[mode] == classes["f32"]).mean())
    print(f"{mode}: judge class accuracy {100 * acc:.1f}% of {a.num_samples}; same judged class as f32 "
          f"{100 * same:.1f}%; {time.perf_counter() - t:.1f} s incl. compile; load {os.getloadavg()[0]:.2f}",
          flush=True)


if __name__ == "__main__":
  main()
