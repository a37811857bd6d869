"""Trains the `shapes` judge (classifier + offline FID feature network) and writes its weights as an .npz:

  python scripts/train_judge.py --out ~/.cache/arjax/shapes_judge.npz
  python scripts/train_judge.py --out judge4.npz --colours red,green,blue,yellow --steps 500

Prints the training time and the held-out accuracies on the first --num_test `test` images.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(args):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from arjax.eval import judge  # pylint: disable=import-outside-toplevel
  colours = tuple(args.colours.split(","))
  t0 = time.time()
  params = judge.train_judge(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                             image_size=args.image_size, colours=colours)
  train_s = time.time() - t0
  judge.save_params(args.out, params, colours, args.image_size)
  images, targets = judge.real_data("test", args.num_test, args.image_size, colours)
  pred = judge.predict(params, images)
  acc = {k: round(float(np.mean(pred[k] == targets[k])), 4) for k in pred}
  print(f"trained in {train_s:.1f}s; held-out accuracy on {args.num_test} test images: {acc}; wrote {args.out}")


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="output .npz path")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--colours", default="red,blue", help="comma-separated shapes colours")
  parser.add_argument("--num_test", type=int, default=2000)
  main(parser.parse_args())
