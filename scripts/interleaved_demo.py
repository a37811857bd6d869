"""Interleaved demo of a trained Orthus model: caption -> image -> a caption of that image -> a second image.

  python scripts/interleaved_demo.py --config configs/shapes/orthus.py --workdir runs/orthus \
      --tokenizer runs/vq --out docs/figures/orthus_interleaved.png [--eval 256]
Each row of the PNG: the prompt caption, the image generated from it, the caption the model writes for that image,
and the image generated from that caption. A second PNG (<out>_stream.png) shows one `generate` call per caption
that follows the modality switch on its own: the caption, <boi>, the image, <eoi>, then the text the model writes.
--eval N also runs the text -> image judge and the image -> text caption evaluators on N test examples and prints
one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
from PIL import Image, ImageDraw

from arjax import config as config_lib
from arjax import registry
from arjax.data import pipeline
from arjax.eval import evaluators, grid
from arjax.train import checkpoint

SCALE, TEXT_W = 3, 260


def panel(rows, kinds: str, image_size: int, path):
  """rows of cells (str, or image [H, W, 3] in [-1, 1]) in columns of `kinds` ('t' text, 'i' image) -> one PNG;
  images upscaled SCALE x; a cell of the other kind (or a missing one) stays blank."""
  size = image_size * SCALE
  widths = [TEXT_W if k == "t" else size + 4 for k in kinds]
  out = Image.new("RGB", (sum(widths), len(rows) * (size + 4)), "white")
  draw = ImageDraw.Draw(out)
  for r, row in enumerate(rows):
    x = 0
    for cell, kind, w in zip(list(row) + [None] * len(kinds), kinds, widths):
      y = r * (size + 4) + 2
      if kind == "t" and isinstance(cell, str):
        draw.text((x + 4, y + size // 2 - 6), cell[:42], fill="black")
      elif kind == "i" and isinstance(cell, np.ndarray):
        out.paste(Image.fromarray(grid.to_uint8(cell)).resize((size, size), Image.NEAREST), (x + 2, y))
      x += w
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  out.save(path)
  return path


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--tokenizer", default="runs/vq")
  p.add_argument("--out", default="docs/figures/orthus_interleaved.png")
  p.add_argument("--num", type=int, default=6, help="captions (the first of the test split)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--eval", type=int, default=0, help="test examples for the two evaluators (0: skip)")
  p.add_argument("--ema", type=int, default=0, help="1: the EMA params (0: the raw ones, for short runs)")
  a = p.parse_args()
  cfg = config_lib.load_config(a.config)
  cfg.tokenizer.workdir = a.tokenizer
  model = registry.build_model(cfg)
  params = checkpoint.load_params(os.path.join(a.workdir, "checkpoints"), ema=bool(a.ema))
  opts = dict(cfg.sample)
  source = pipeline.make_source(cfg.data, "test", a.num)
  captions = [source[i]["caption"] for i in range(a.num)]
  rng = jax.random.PRNGKey(a.seed)
  t0 = time.time()
  first = np.asarray(model.text_to_image(params, captions, jax.random.fold_in(rng, 0), **opts))
  described = model.image_to_text(params, first, jax.random.fold_in(rng, 1), **dict(opts, temperature=0.0))
  second = np.asarray(model.text_to_image(params, [d.encode()[:model.max_text].decode("utf-8", "ignore") for d in described], jax.random.fold_in(rng, 2), **opts))
  size = cfg.data.image_size
  panel([[c, i1, d, i2] for c, i1, d, i2 in zip(captions, first, described, second)], "titi", size, a.out)
  stream = model.generate(params, captions, jax.random.fold_in(rng, 3), **dict(opts, temperature=0.0))["segments"]
  panel(stream, "titi", size, a.out.replace(".png", "_stream.png"))
  print(f"wrote {a.out} and its _stream.png in {time.time() - t0:.0f}s (load: {os.getloadavg()[0]:.1f})")
  for c, d in zip(captions, described):
    print(f"  {c!r} -> image -> {d!r}")
  if a.eval:
    evals = dict(judge=dict(type="judge", num_samples=a.eval, cond="caption", sample_opts=opts),
                 caption=dict(type="caption", num_samples=a.eval, sample_opts=dict(opts, temperature=0.0)))
    result = {"config": a.config, "workdir": a.workdir}
    for ev in evaluators.build_evaluators(evals, model, a.workdir, data_cfg=cfg.data):
      result.update({f"{ev.name}/{k}": round(v, 4) for k, v in ev.run(params, jax.random.PRNGKey(a.seed)).items()})
    print(json.dumps(result))


if __name__ == "__main__":
  main()
