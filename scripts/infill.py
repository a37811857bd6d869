"""Infilling with a trained any-subset AR model (configs/shapes/any_order*.py): ASSD vs sequential sampling.

  python scripts/infill.py --config configs/shapes/any_order.py --workdir runs/any_order_img --vq runs/vq \
      --out runs/any_order_img_infill
  python scripts/infill.py --config configs/shapes/any_order_text.py --workdir runs/any_order_text \
      --out runs/any_order_text_infill
For test-split examples with 50%, 90% and 100% of the tokens masked (a random subset per row, filled in raster
order), runs the sequential sampler (draft_len=1) and ASSD (--draft_len) on the same batch and writes OUT/table.md:
NFE per row (mean, max), wall-clock of the batch (compiled; the machine load is printed beside it) and quality:
the shapes judge's class accuracy of the infilled images, or for captions the fraction that are valid captions of
their class and their NLL under the model (raster order, nats per caption). Images: OUT/inpaint.png, columns of
original / masked (grey) / infilled sequentially / infilled with ASSD, for a centre box and for 90% random masks.
Captions: examples printed and written to OUT/captions.md.
"""
from __future__ import annotations

import argparse
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from arjax import config as config_lib
from arjax import registry
from arjax.data import pipeline
from arjax.data import shapes
from arjax.eval import evaluators
from arjax.eval import grid
from arjax.eval import judge
from arjax.train import checkpoint

RATES = (0.5, 0.9, 1.0)
CAPTION = re.compile(r"a (small|large) (\w+) (\w+) (in the center|at the [a-z ]+)")


def load(a):
  cfg = config_lib.load_config(a.config)
  if "tokenizer" in cfg:
    if not a.vq:
      raise ValueError(f"{a.config} has an image tokenizer: pass --vq (its training workdir, e.g. runs/vq)")
    cfg.tokenizer.workdir = a.vq
  model = registry.build_model(cfg)
  return cfg, model, checkpoint.load_params(os.path.join(a.workdir, "checkpoints"), ema=bool(a.ema))


def test_batch(cfg, model, n):
  """(tokens [n, N], labels [n], images [n, H, W, 3] in [-1, 1]) from the test split."""
  src = pipeline.make_source(cfg.data, "test", n)
  exs = [pipeline.to_model_example(src[i]) for i in range(n)]
  batch = {k: jnp.asarray(np.stack([e[k] for e in exs])) for k in ("image", "label", "caption")}
  return np.asarray(jax.jit(model.preprocess)(batch)["tokens"]), np.asarray(batch["label"]), np.asarray(batch["image"])


def random_known(rng, n, num_tokens, rate):
  """bool [n, N]: round((1 - rate) * N) known positions per row, chosen at random."""
  keys = jax.random.uniform(rng, (n, num_tokens))
  ranks = np.asarray(jnp.argsort(jnp.argsort(keys, axis=1), axis=1))
  return ranks < round((1 - rate) * num_tokens)


COMPILED = set()


def timed_infill(model, params, tokens, known, labels, rng, draft_len):
  """(tokens, nfe, seconds of a compiled call)."""
  run = lambda: model.infill(params, tokens, known, rng, cond={"label": jnp.asarray(labels)}, draft_len=draft_len)
  if (tokens.shape, draft_len) not in COMPILED:  # the first call of a shape compiles: not timed
    jax.block_until_ready(run())
    COMPILED.add((tokens.shape, draft_len))
  t0 = time.perf_counter()
  out, nfe = jax.block_until_ready(run())
  return np.asarray(out), np.asarray(nfe), time.perf_counter() - t0


def valid_caption(text: str, label: int, colours) -> bool:
  """Whether `text` is a well-formed `shapes` caption of class `label`."""
  m = CAPTION.fullmatch(text)
  if not m or m.group(3) not in shapes.SHAPES or m.group(2) not in colours:
    return False
  where = m.group(4)
  if where != "in the center" and where[len("at the "):] not in shapes.POSITIONS:
    return False
  return shapes.SHAPES.index(m.group(3)) * len(colours) + colours.index(m.group(2)) == label


def quality(cfg, model, params, tokens, labels, judge_params):
  """Images: {'judge acc'}; captions: {'valid', 'NLL'}."""
  if model.source == "image":
    images = np.asarray(model.decode(model.tokenizer_params, jnp.asarray(tokens).reshape(-1, *model.grid)))
    return {"judge acc": judge.accuracy(judge_params, images, labels)}
  colours = tuple(cfg.data.colours)
  texts = model.tokenizer.text(tokens)
  nll = jax.jit(model.nll)(params, dict(tokens=jnp.asarray(tokens), label=jnp.asarray(labels)))
  return {"valid": float(np.mean([valid_caption(t, int(y), colours) for t, y in zip(texts, labels)])),
          "NLL": float(np.mean(nll))}


def grey_out(images, known, grid_hw):
  """Images with the pixels of unknown tokens set to grey."""
  h, w = images.shape[1:3]
  keep = np.asarray(known).reshape(-1, *grid_hw).repeat(h // grid_hw[0], 1).repeat(w // grid_hw[1], 2)
  return np.where(keep[..., None], images, 0.0)


def inpaint_grid(model, params, tokens, labels, images, a, path):
  """Columns of original / masked / sequential / ASSD for a centre box and for 90% random masks."""
  n, (gh, gw) = min(a.grid_examples, len(tokens)), model.grid
  tokens, labels, images = tokens[:n], labels[:n], images[:n]
  box = np.ones((gh, gw), bool)
  box[gh // 4:gh - gh // 4, gw // 4:gw - gw // 4] = False
  rows = [images]
  for known in (np.broadcast_to(box.reshape(-1), tokens.shape), random_known(jax.random.PRNGKey(7), n, tokens.shape[1],
                                                                             0.9)):
    rows.append(grey_out(images, known, model.grid))
    for k in (1, a.draft_len):
      out, _, _ = timed_infill(model, params, tokens, known, labels, jax.random.PRNGKey(a.seed), k)
      rows.append(np.asarray(model.decode(model.tokenizer_params, jnp.asarray(out).reshape(-1, gh, gw))))
  grid.save_grid(np.concatenate(rows), path, ncols=n, scale=3)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--vq", default="", help="the VQ tokenizer's workdir (image models)")
  p.add_argument("--out", required=True)
  p.add_argument("--n", type=int, default=128, help="test examples per setting")
  p.add_argument("--draft_len", type=int, default=4)
  p.add_argument("--grid_examples", type=int, default=10)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--ema", type=int, default=0, help="1: the EMA params (after short runs they still hold the init)")
  a = p.parse_args()
  os.makedirs(a.out, exist_ok=True)
  cfg, model, params = load(a)
  tokens, labels, images = test_batch(cfg, model, a.n)
  judge_params = judge.load_or_train(evaluators.DEFAULT_JUDGE_PATH) if model.source == "image" else None
  rows, examples = [], []
  for rate in RATES:
    known = random_known(jax.random.PRNGKey(a.seed + 1), a.n, tokens.shape[1], rate)
    for k in (1, a.draft_len):
      out, nfe, secs = timed_infill(model, params, tokens, known, labels, jax.random.PRNGKey(a.seed), k)
      q = quality(cfg, model, params, out, labels, judge_params)
      load_avg = os.getloadavg()[0]
      rows.append((rate, k, nfe.mean(), nfe.max(), (~known).sum(1).mean(), secs, load_avg, q))
      print(f"masked {rate:.0%} draft_len {k}: NFE/row {nfe.mean():.1f} (max {nfe.max()}) of "
            f"{(~known).sum(1).mean():.1f} tokens, {secs:.2f} s (load {load_avg:.1f}), {q}", flush=True)
      if model.source == "caption" and rate < 1.0:
        masked = ["".join(c if m else "_" for c, m in zip(t.ljust(64, "\0"), kn)).rstrip("\0").replace("\0", "·")
                  for t, kn in zip(model.tokenizer.text(tokens[:6]), known[:6])]
        infilled = ["".join(c if c.isprintable() else "·" for c in t) for t in model.tokenizer.text(out[:6])]
        for orig, shown, got in zip(model.tokenizer.text(tokens[:6]), masked, infilled):
          examples.append(f"| {rate:.0%} | {k} | `{orig}` | `{shown}` | `{got}` |")
  metric_names = list(rows[0][-1])
  lines = ["| masked | draft_len | NFE / row (mean) | NFE max | tokens / row | wall-clock (s) | load | "
           + " | ".join(metric_names) + " |", "|" + "---|" * (7 + len(metric_names))]
  for rate, k, nfe_mean, nfe_max, todo, secs, load_avg, q in rows:
    lines.append(f"| {rate:.0%} | {k} | {nfe_mean:.1f} | {nfe_max} | {todo:.0f} | {secs:.2f} | {load_avg:.1f} | "
                 + " | ".join(f"{q[m]:.3f}" for m in metric_names) + " |")
  table = "\n".join(lines)
  print(table)
  with open(os.path.join(a.out, "table.md"), "w") as f:
    f.write(f"{a.n} test examples, checkpoint {a.workdir}, draft_len {a.draft_len}, seed {a.seed}\n\n{table}\n")
  if model.source == "image":
    inpaint_grid(model, params, tokens, labels, images, a, os.path.join(a.out, "inpaint.png"))
    print(f"wrote {a.out}/inpaint.png")
  else:
    text = "| masked | draft_len | original | masked (`_`) | infilled |\n|---|---|---|---|---|\n" + "\n".join(examples)
    print(text)
    with open(os.path.join(a.out, "captions.md"), "w") as f:
      f.write(text + "\n")
  print(f"wrote {a.out}/table.md")


if __name__ == "__main__":
  main()
