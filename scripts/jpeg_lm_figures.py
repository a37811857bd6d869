"""JPEG-LM vs VQ next-token on `shapes` 32 px: the figures of docs/jpeg_lm.md.

Trains configs/shapes/jpeg_lm.py and configs/shapes/next_token.py (over a trained VQ, e.g. runs/vq) with the same
transformer, steps, batch and optimizer (the configs' own), then measures: judge accuracy, judge-space FID,
sequence lengths, training and sampling tokens/s, JPEG-LM's decodable-file rate with and without the constraint,
and writes a prefix-completion grid and class grids (PNG) plus results.json.

  python scripts/jpeg_lm_figures.py --out runs/jpeg_lm_figures --vq runs/vq/checkpoints [--steps 1000]
  python scripts/jpeg_lm_figures.py --out /tmp/jf --smoke          # tiny models, a few steps (a dry run)

Training uses arjax.train.step (the trainer's step, optimizer and EMA) on batches drawn in this process from
the shapes train split, not arjax.train.loop (its grain pipeline, checkpoints and TensorBoard are left out so
that the script also runs where grain is not installed). `--vq` is an orbax checkpoint dir or an .npz of params.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import multiprocessing
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from PIL import Image, ImageFile
from tqdm import tqdm

from arjax import config as config_lib
from arjax import registry
from arjax.data import shapes
from arjax.eval import grid, judge, metrics
from arjax.paradigms import jpeg_lm
from arjax.sampling import jpeg_grammar
from arjax.tokenizers import jpeg
from arjax.train.optimizer import make_optimizer
from arjax.train.step import TrainState, make_train_step

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "configs", "shapes")
SAMPLE = dict(temperature=1.0, top_k=50, top_p=0.9)  # the JPEG-LM paper's sampling, used for both models


def _examples(split, indices, size):
  src = shapes.ShapesSource(split, max(50_000, int(indices.max()) + 1), size)
  return [(src[int(i)]["image"], src[int(i)]["label"]) for i in indices]


def shapes_arrays(split: str, n: int, size: int, workers: int):
  """The first n examples of a split: uint8 images [n, H, W, 3], int32 labels [n]."""
  chunks = np.array_split(np.arange(n), max(workers, 1) * 4)
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
    out = [e for part in pool.map(_examples, [split] * len(chunks), chunks, [size] * len(chunks)) for e in part]
  return np.stack([e[0] for e in out]), np.asarray([e[1] for e in out], np.int32)


def batches(n: int, batch: int, steps: int, seed: int):
  """Row indices of each step's batch: epochs of fresh permutations of n examples (as the shuffled pipeline)."""
  rng = np.random.default_rng(seed)
  order = np.concatenate([rng.permutation(n) for _ in range(-(-steps * batch // n))])
  return order[:steps * batch].reshape(steps, batch)


def load_params(path: str):
  if path.endswith(".npz"):
    with np.load(path) as f:
      return traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v) for k, v in f.items()})
  from arjax.train import checkpoint
  return checkpoint.load_params(path, ema=False)


def build(name: str, arg: str, vq: str):
  cfg = config_lib.load_config(os.path.join(CONFIGS, f"{name}.py") + (f":{arg}" if arg else ""))
  if "tokenizer" not in cfg:
    return cfg, registry.build_model(cfg)
  tcfg = config_lib.load_config(cfg.tokenizer.config)
  tokenizer = registry.resolve(tcfg.model.name)(tcfg.model)
  params = load_params(vq) if vq else nn.meta.unbox(tokenizer.init(
      jax.random.PRNGKey(0), dict(image=jnp.zeros((1, tcfg.data.image_size, tcfg.data.image_size, 3)))))
  return cfg, registry.resolve(cfg.model.name)(cfg.model, tokenizer, params)


def train(model, cfg, images, labels, steps: int, batch: int):
  """EMA params after `steps` steps of the trainer's step; (params, seconds per step, tokens per step)."""
  tx, lr_fn = make_optimizer(cfg.optim, steps)
  step_fn = jax.jit(make_train_step(model, tx, lr_fn, ema_decay=cfg.train.ema_decay), donate_argnums=0)
  preprocess = jax.jit(model.preprocess)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(cfg.seed), None))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     ema_params=jax.tree.map(jnp.copy, params), rng=jax.random.PRNGKey(cfg.seed + 1))
  rows = batches(len(images), batch, steps, cfg.seed)
  to_batch = lambda k: preprocess(dict(image=images[rows[k]].astype(np.float32) / 127.5 - 1, label=labels[rows[k]]))
  tokens = real = 0
  for k in tqdm(range(steps), desc=cfg.model.name, mininterval=10):
    if k == 10:  # compile and warm-up excluded from the timing
      jax.block_until_ready(state)
      t0 = time.time()
    b = to_batch(k)
    state, m = step_fn(state, b)
    if k >= 10:  # positions computed (padding included) and real tokens (JPEG-LM: BOS, bytes, EOS)
      tokens += int(np.prod(b["tokens"].shape))
      real += int(np.sum(np.asarray(b["tokens"]) != jpeg_lm.PAD)) if cfg.model.name == "jpeg_lm" else 0
  jax.block_until_ready(state)
  dt = (time.time() - t0) / (steps - 10)
  print(f"{cfg.model.name}: final loss {float(m['loss']):.4f}, {dt * 1e3:.1f} ms/step", flush=True)
  return state.ema_params, dt, tokens / (steps - 10), (real or tokens) / (steps - 10)


def sample_all(fn, n: int, batch: int, num_classes: int):
  """fn(labels, rng) over n labels i % num_classes in batches; (outputs concatenated, seconds after the first)."""
  outs, t0 = [], None
  for k, s in enumerate(range(0, n, batch)):
    labels = np.arange(s, min(s + batch, n)) % num_classes
    out = fn(labels, jax.random.PRNGKey(k))
    jax.block_until_ready([o for o in out if isinstance(o, jax.Array)] if isinstance(out, list) else out)
    if k == 0:
      t0 = time.time()
    outs.append(out)
  return outs, (time.time() - t0) if n > batch else float("nan")


def strict_ok(data: bytes, size: int) -> tuple[bool, bool]:
  """(Pillow decodes it at size x size without truncated-image leniency, and the reference validator accepts it)."""
  assert not ImageFile.LOAD_TRUNCATED_IMAGES
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      pil = im.size == (size, size)
  except Exception:  # noqa: BLE001 -- any Pillow failure means "does not decode"
    pil = False
  return pil, pil and jpeg_grammar.check(data, size, size) is None


def judge_scores(judge_params, images, labels, real_feats):
  feats = judge.features(judge_params, images)
  fid = metrics.frechet_distance(*metrics.feature_stats(feats), *metrics.feature_stats(real_feats))
  return dict(judge_accuracy=judge.accuracy(judge_params, images, labels), judge_fid=float(fid))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--vq", default="", help="trained VQ params (orbax checkpoints dir or .npz); empty: untrained")
  p.add_argument("--steps", type=int, default=0, help="0: the configs' steps")
  p.add_argument("--num_samples", type=int, default=512)
  p.add_argument("--sample_batch", type=int, default=256)
  p.add_argument("--judge", default=os.path.expanduser("~/.cache/arjax/shapes_judge.npz"))
  p.add_argument("--workers", type=int, default=os.cpu_count())
  p.add_argument("--smoke", action="store_true")
  a = p.parse_args()
  os.makedirs(a.out, exist_ok=True)
  arg = "smoke" if a.smoke else ""
  (jcfg, jmodel), (ncfg, nmodel) = build("jpeg_lm", arg, ""), build("next_token", arg, a.vq)
  steps, batch, size = a.steps or jcfg.train.steps, jcfg.data.batch_size, jcfg.data.image_size
  assert (batch, size) == (ncfg.data.batch_size, ncfg.data.image_size)
  t0 = time.time()
  images, labels = shapes_arrays("train", min(steps * batch, jcfg.data.num_examples), size, a.workers)
  test_images, test_labels = shapes_arrays("test", a.num_samples, size, a.workers)
  print(f"data: {len(images)} train examples in {time.time() - t0:.0f}s", flush=True)
  judge_params = judge.load_or_train(a.judge, image_size=size)
  real_feats = judge.features(judge_params, test_images)
  res = dict(device=str(jax.devices()[0].device_kind), steps=steps, batch=batch, sample_opts=SAMPLE,
             uptime=os.getloadavg())
  real_files = [jpeg.encode(x) for x in test_images]
  lens = [len(f) for f in real_files]
  decoded = np.stack([jpeg.decode(f) for f in real_files[:64]]) / 127.5 - 1
  res["real"] = dict(judge_accuracy=judge.accuracy(judge_params, test_images, test_labels),
                     jpeg_q25=judge_scores(judge_params, np.stack([jpeg.decode(f) for f in real_files]) / 127.5 - 1,
                                           test_labels, real_feats),
                     jpeg_bytes=[min(lens), float(np.mean(lens)), max(lens)],
                     jpeg_q25_psnr=float(np.mean(metrics.psnr(decoded, test_images[:64] / 127.5 - 1))))
  n, sb = a.num_samples, a.sample_batch
  for name, cfg, model in (("jpeg_lm", jcfg, jmodel), ("next_token", ncfg, nmodel)):
    params, sec, tok, real = train(model, cfg, images, labels, steps, batch)
    r = res[name] = dict(params=int(sum(x.size for x in jax.tree.leaves(params))), train_ms_per_step=sec * 1e3,
                         train_positions_per_s=tok / sec, train_real_tokens_per_s=real / sec)
    for cfg_scale in (1.0, 3.0):
      opts = dict(SAMPLE, cfg_scale=cfg_scale)
      if name == "jpeg_lm":
        outs, dt = sample_all(lambda l, k: model.sample_tokens(params, {"label": l}, k, **opts), n, sb,
                              model.num_classes)
        rows = np.concatenate([np.asarray(o) for o in outs])
        constrained_rows = rows if cfg_scale == 1.0 else constrained_rows
        files = [model._file(row) for row in rows[:, 1:]]
        out = np.stack([model.decode_file(f) for f in files])
        lens = [int(np.flatnonzero(row >= jpeg_lm.EOS)[0]) if (row >= jpeg_lm.EOS).any() else len(row) - 1
                for row in rows[:, 1:]]
        gen_tokens = sum(lens) + len(lens)  # bytes + EOS actually generated (the loop stops once all rows end)
        r[f"cfg{cfg_scale:g}"] = dict(bytes=[min(lens), float(np.mean(lens)), max(lens)],
                                      valid=float(np.mean([strict_ok(f, size)[1] for f in files])))
      else:
        outs, dt = sample_all(lambda l, k: model.sample(params, {"label": l}, k, **opts), n, sb, model.num_classes)
        out = np.concatenate([np.asarray(o) for o in outs])
        gen_tokens = n * model.num_tokens
        r[f"cfg{cfg_scale:g}"] = {}
      labels_n = np.arange(n) % model.num_classes
      r[f"cfg{cfg_scale:g}"].update(judge_scores(judge_params, out, labels_n, real_feats),
                                    sample_tokens_per_s=gen_tokens * (1 - sb / n) / dt if n > sb else None,
                                    sample_images_per_s=(n - sb) / dt if n > sb else None)
      if cfg_scale == 3.0:
        grid.save_grid(out[:64], os.path.join(a.out, f"{name}_cfg3.png"), ncols=8, scale=3)
    if name == "jpeg_lm":
      unconstrained, _ = sample_all(lambda l, k: model.sample_files(params, l, k, constrained=False, **SAMPLE), n,
                                    sb, model.num_classes)
      oks = np.asarray([strict_ok(f, size) for fs in unconstrained for f in fs])
      constrained = [model._file(row) for row in constrained_rows[:, 1:]]
      c_ok = np.asarray([strict_ok(f, size) for f in constrained])
      r["decodable"] = dict(constrained_pillow=float(c_ok[:, 0].mean()), constrained_strict=float(c_ok[:, 1].mean()),
                            unconstrained_pillow=float(oks[:, 0].mean()),
                            unconstrained_strict=float(oks[:, 1].mean()))
      r["prefix_grid"] = prefix_grid(model, params, test_images, test_labels, os.path.join(a.out, "prefix.png"))
    print(json.dumps({name: r}, indent=1), flush=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:  # after each model: a later failure keeps it
      json.dump(res, f, indent=1)


def prefix_grid(model, params, images, labels, path, restarts=(0, 1, 2, 3)):
  """Rows: the real image (JPEG q25), then completions from its bytes up to the n-th RST marker; a column per
  test image (one per class). Returns the layout."""
  cols = [int(np.flatnonzero(labels == c)[0]) for c in range(model.num_classes) if (labels == c).any()]
  rows = [np.stack([model.decode_file(jpeg.to_file(jpeg.encode(images[i]))) for i in cols])]
  for n in restarts:
    prompts = [jpeg_lm.prefix(jpeg.encode(images[i]), n) for i in cols]
    files = model.sample_files(params, labels[cols], jax.random.PRNGKey(100 + n), prompts=prompts, **SAMPLE)
    rows.append(np.stack([model.decode_file(f) for f in files]))
  grid.save_grid(np.concatenate(rows), path, ncols=len(cols), scale=4)
  return dict(rows=["real (q25)"] + [f"prompt: header + {n} MCUs" for n in restarts], columns=[int(labels[i])
                                                                                               for i in cols])


if __name__ == "__main__":
  main()
