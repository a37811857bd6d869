"""The LongLive figures of docs/longlive.md: frames/s, per-frame latency + KV bytes (window + sink vs full causal),
adherence after a prompt switch (re-cache / keep / reset), drift at 4x the training clip (with / without streaming
long tuning), INT8 vs f32. Writes docs/figures/longlive_*.png, a GIF and longlive_results.json; prints tables.

  python scripts/longlive_figures.py --base runs/longlive_vq --long runs/longlive_long --tokenizer runs/vq
Plots are drawn with Pillow. Timings are wall-clock on this CPU under the load printed beside them.
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
from PIL import Image, ImageDraw, ImageFont

from arjax.eval import evaluators, video
from arjax.eval import judge as judge_lib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stream_video  # noqa: E402  (scripts/stream_video.py)

CONFIG = "configs/moving_shapes/longlive.py"
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def line_plot(path, series: dict, title: str, xlabel: str, ylabel: str, size=(420, 260)):
  """series: name -> (x, y); a small PNG line chart with axes, ticks and a legend."""
  w, h = size
  img = Image.new("RGB", size, "white")
  d, font = ImageDraw.Draw(img), ImageFont.load_default()
  left, right, top, bottom = 52, w - 10, 22, h - 34
  xs = np.concatenate([np.asarray(x, float) for x, _ in series.values()])
  ys = np.concatenate([np.asarray(y, float) for _, y in series.values()])
  x0, x1 = xs.min(), xs.max() if xs.max() > xs.min() else xs.min() + 1
  y0, y1 = min(0.0, ys.min()), ys.max() * 1.08 if ys.max() > 0 else 1.0
  px = lambda x: left + (x - x0) / (x1 - x0) * (right - left)
  py = lambda y: bottom - (y - y0) / (y1 - y0) * (bottom - top)
  d.rectangle([left, top, right, bottom], outline="black")
  for v in np.linspace(y0, y1, 5):
    d.text((2, py(v) - 5), f"{v:.3g}", fill="black", font=font)
  for v in np.linspace(x0, x1, 5):
    d.text((px(v) - 8, bottom + 4), f"{v:.0f}", fill="black", font=font)
  d.text((left, 4), title, fill="black", font=font)
  d.text((w // 2 - 30, h - 14), xlabel, fill="black", font=font)
  d.text((left + 4, top + 2), ylabel, fill="gray", font=font)
  for i, (name, (x, y)) in enumerate(series.items()):
    pts = [(px(a), py(b)) for a, b in zip(x, y)]
    colour = COLOURS[i % len(COLOURS)]
    d.line(pts, fill=colour, width=2) if len(pts) > 1 else d.ellipse([pts[0][0] - 2, pts[0][1] - 2, *pts[0]], colour)
    d.text((right - 150, top + 14 + 12 * i), name, fill=colour, font=font)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img.save(path)


def judged(jp, frames_BTHW3):
  return video.judge_frames(judge_lib, jp, frames_BTHW3)


def stream(model, params, labels, n, switches=None, mode="recache", **opts):
  return stream_video.stream_frames(model, params, labels, n, switches or {}, mode, seed=0, progress=False,
                                    compute_dtype="float32", **opts)


def fps_of(model, params, batch, frames=16, **opts):
  return stream(model, params, list(range(batch)) if batch <= model.num_classes else [0] * batch, frames, **opts)[1]


def latency(model, params, n_max, checkpoints, full):
  """Per-frame seconds and held KV bytes at each frame index in `checkpoints` (mean of the 4 frames before it)."""
  opts = dict(full=True, max_frames=n_max) if full else {}
  s = model.stream(params, jnp.asarray([0]), jax.random.PRNGKey(0), compute_dtype="float32", **opts)
  out = {}
  times = []
  for k in range(n_max):
    t0 = time.perf_counter()
    np.asarray(s.next(1))
    times.append(time.perf_counter() - t0)
    if k + 1 in checkpoints:
      out[k + 1] = dict(ms=1000 * float(np.mean(times[-4:])), kv_bytes=s.cache_bytes(),
                        allocated=s.cache_bytes(allocated=True))
  return out, np.asarray(times)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--base", required=True)
  p.add_argument("--long", default="")
  p.add_argument("--tokenizer", required=True)
  p.add_argument("--out", default="docs/figures")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--latency_frames", type=int, default=512)
  args = p.parse_args()
  load = lambda: f"load {os.getloadavg()[0]:.1f}"
  res = {}
  jp = evaluators._judge_params("", None)[1]
  model, params = stream_video.load(CONFIG + ":vq", args.base, args.tokenizer)
  smoke, smoke_params = stream_video.load(CONFIG + ":smoke", "", "")
  b = args.batch
  labels = np.arange(b) % model.num_classes
  new = (labels + 1 + (np.arange(b) // model.num_classes) % (model.num_classes - 1)) % model.num_classes

  res["fps"] = dict(smoke_b1=fps_of(smoke, smoke_params, 1), demo_b1=fps_of(model, params, 1),
                    demo_b8=fps_of(model, params, 8), load=load())
  print("fps", res["fps"], flush=True)

  n_max = args.latency_frames + 4
  marks = (32, 128, args.latency_frames)
  ring, ring_t = latency(model, params, n_max, marks, full=False)
  full, full_t = latency(model, params, n_max, marks, full=True)
  res["latency"] = dict(window_sink=ring, full_causal=full, load=load())
  print("latency", res["latency"], flush=True)
  k = np.arange(1, n_max + 1)
  smooth = lambda t: np.convolve(t, np.ones(8) / 8, mode="same") * 1000
  keep = slice(16, -4)  # past the first frames (compilation)
  line_plot(f"{args.out}/longlive_latency.png", {"window+sink (ring)": (k[keep], smooth(ring_t)[keep]),
                                                 "full causal": (k[keep], smooth(full_t)[keep])},
            f"per-frame latency (ms, batch 1, {load()})", "frame", "ms")
  per_frame = ring[marks[0]]["allocated"] // (model.sink + model.window)
  line_plot(f"{args.out}/longlive_kv_bytes.png",
            {"window+sink (ring)": (k, per_frame * np.minimum(k, model.sink + model.window) / 1024),
             "full causal": (k, per_frame * k / 1024)}, "KV cache held (KiB)", "frame", "KiB")

  before, after_n = 16, 16
  curves = {}
  res["switch"] = {}
  for mode in ("recache", "keep", "reset"):
    vid, _ = stream(model, params, labels, before + after_n, {before: new}, mode)
    want = np.concatenate([np.repeat(labels[:, None], before, 1), np.repeat(new[:, None], after_n, 1)], 1)
    pred = judged(jp, vid)
    acc = video.adherence(pred["label"], want)["per_frame"]
    jump = float(np.abs(vid[:, before].astype(float) - vid[:, before - 1].astype(float)).mean())
    res["switch"][mode] = dict(first4=float(acc[before:before + 4].mean()), first8=float(acc[before:before + 8].mean()),
                               after=float(acc[before:].mean()), before=float(acc[:before].mean()),
                               shape_consistency=video.consistency(pred["shape"], want), pixel_jump_at_switch=jump)
    curves[mode] = (np.arange(-4, after_n), acc[before - 4:])
    if mode == "recache":
      stream_video.write_video(vid[:4], f"{args.out}/longlive_switch.gif", fps=6, scale=1)
  print("switch", res["switch"], flush=True)
  line_plot(f"{args.out}/longlive_switch.png", curves, "judge adherence to the new prompt around the switch",
            "frames after the switch", "accuracy")

  drift = {}
  res["drift"] = {}
  runs = {"frame_ar": (model, params)}
  if args.long:
    runs["+ long tuning"] = stream_video.load(CONFIG + ":vq", args.long, args.tokenizer)
  for name, (m, prm) in runs.items():
    vid, _ = stream(m, prm, labels, 64)
    pred = judged(jp, vid)
    want = np.repeat(labels[:, None], 64, 1)
    acc = video.adherence(pred["label"], want)["per_frame"]
    res["drift"][name] = dict(per_16=[float(acc[i:i + 16].mean()) for i in range(0, 64, 16)],
                              shape_consistency=video.consistency(pred["shape"], want),
                              colour_consistency=video.consistency(pred["colour"], want))
    drift[name] = (np.arange(64), np.convolve(acc, np.ones(4) / 4, mode="same"))
    if name == "frame_ar":
      f32_acc = float(acc[:32].mean())
  print("drift", res["drift"], flush=True)
  line_plot(f"{args.out}/longlive_drift.png", drift, "judge accuracy over a 64-frame stream (train clip 16)",
            "frame", "accuracy")

  from arjax.nn import quant
  vid, fps8 = stream(model, params, labels, 32, int8=True)
  res["int8"] = dict(f32_accuracy=f32_acc, int8_accuracy=float(video.adherence(
      judged(jp, vid)["label"], np.repeat(labels[:, None], 32, 1))["per_frame"].mean()),
      f32_weight_bytes=quant.weight_bytes(params),
      int8_weight_bytes=quant.weight_bytes(quant.for_inference(params, jnp.float32, True)),
      int8_fps_b16=fps8, f32_fps_b16=fps_of(model, params, b, frames=32), load=load())
  print("int8", res["int8"], flush=True)
  with open(f"{args.out}/longlive_results.json", "w") as f:
    json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
