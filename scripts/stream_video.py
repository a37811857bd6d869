"""Streams a long video from a next_frame (LongLive) model with scheduled prompt switches to a GIF / MP4.

  python scripts/stream_video.py --config configs/moving_shapes/longlive.py:vq --workdir runs/longlive_vq \
      --tokenizer runs/vq --labels 0,3,5 --frames 256 --switch 64:2,128:7 --out docs/figures/longlive_stream.gif
  python scripts/stream_video.py --config configs/moving_shapes/longlive.py:smoke --frames 40 --out /tmp/s.gif
--switch FRAME:LABEL[/LABEL...] switches every row (or row i to the i-th label) at FRAME with --mode (recache: KV
re-cache, keep: no re-cache, reset: a new video). Without --workdir the weights are random (smoke). The rows are
tiled side by side; the file is written with imageio (MP4 needs imageio-ffmpeg). Prints frames/s (frames of
all rows per second spent in next(), after one warm-up frame that compiles; switches are not timed).
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from arjax import config as config_lib
from arjax import registry
from arjax.eval import grid


def parse_switches(spec: str, batch: int) -> dict:
  """'64:2,128:7/1' -> {64: [2] * batch, 128: [7, 1]} (one label for every row, or one per row)."""
  out = {}
  for item in filter(None, spec.split(",")):
    frame, _, labels = item.partition(":")
    values = [int(v) for v in labels.split("/")] if labels else []
    if not frame.isdigit() or int(frame) < 1 or len(values) not in (1, batch):
      raise ValueError(f"--switch item {item!r}: expected FRAME:LABEL or FRAME:L1/.../L{batch} with FRAME >= 1")
    out[int(frame)] = values * batch if len(values) == 1 else values
  return out


def load(config: str, workdir: str, tokenizer: str):
  """(model, params): EMA params of workdir/checkpoints, or random ones without a workdir."""
  cfg = config_lib.load_config(config)
  if tokenizer:
    cfg.tokenizer.workdir = tokenizer
  model = registry.build_model(cfg)
  if workdir:
    from arjax.train import checkpoint
    return model, checkpoint.load_params(os.path.join(workdir, "checkpoints"), ema=True)
  return model, model.init(jax.random.PRNGKey(cfg.seed), None)


def stream_frames(model, params, labels, frames: int, switches: dict, mode: str, seed: int, progress: bool = True,
                  **opts):
  """(video uint8 [B, frames, H, W, 3], frames/s over all rows after the first frame; switches not timed)."""
  s = model.stream(params, jnp.asarray(labels, jnp.int32), jax.random.PRNGKey(seed), **opts)
  out, seconds = [np.asarray(s.next(1))], 0.0
  for k in tqdm(range(1, frames), desc="stream", disable=not progress, dynamic_ncols=True):
    if k in switches:
      s.switch(jnp.asarray(switches[k], jnp.int32), mode=mode)
    t0 = time.perf_counter()
    out.append(np.asarray(s.next(1)))  # np.asarray waits for the frame
    seconds += time.perf_counter() - t0
  fps = len(labels) * (frames - 1) / max(seconds, 1e-9)
  return grid.to_uint8(np.concatenate(out, 1)), fps


def write_video(video_BTHW3, path: str, fps: int, scale: int):
  """Rows side by side, nearest-upscaled by `scale`, as a GIF / MP4 via imageio."""
  try:
    import imageio.v2 as imageio
  except ImportError as e:
    raise ImportError("writing videos needs imageio: pip install imageio==2.38.1 (and imageio-ffmpeg for .mp4)") from e
  frames = np.concatenate(list(video_BTHW3), axis=2)  # [T, H, B*W, 3]
  frames = frames.repeat(scale, 1).repeat(scale, 2)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if path.endswith(".gif"):
    imageio.mimsave(path, list(frames), duration=1000 / fps, loop=0)
  else:
    imageio.mimsave(path, list(frames), fps=fps)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True, help="path.py[:preset] of a next_frame config")
  p.add_argument("--workdir", default="", help="training run with checkpoints/ (empty: random weights)")
  p.add_argument("--tokenizer", default="", help="tokenizer run dir (config.tokenizer.workdir)")
  p.add_argument("--labels", default="0,3", help="comma-separated class per row")
  p.add_argument("--frames", type=int, default=64)
  p.add_argument("--switch", default="", help="FRAME:LABEL[/LABEL...],... prompt switches")
  p.add_argument("--mode", default="recache", choices=("recache", "keep", "reset"))
  p.add_argument("--steps", type=int, default=0, help="flow steps per frame (0: the config's)")
  p.add_argument("--int8", action="store_true", help="int8 weight-only Dense kernels")
  p.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--fps", type=int, default=8)
  p.add_argument("--scale", type=int, default=2)
  p.add_argument("--out", required=True, help="output .gif or .mp4")
  args = p.parse_args(argv)
  if args.frames < 2 or not args.out.endswith((".gif", ".mp4")):
    raise SystemExit(f"--frames={args.frames} --out={args.out!r}: expected frames >= 2 and a .gif / .mp4 path")
  labels = [int(v) for v in args.labels.split(",")]
  switches = parse_switches(args.switch, len(labels))
  model, params = load(args.config, args.workdir, args.tokenizer)
  video, fps = stream_frames(model, params, labels, args.frames, switches, args.mode, args.seed, steps=args.steps or None,
                             int8=args.int8, compute_dtype=args.compute_dtype)
  write_video(video, args.out, args.fps, args.scale)
  print(f"{args.out}: {len(labels)} x {args.frames} frames, {fps:.1f} frames/s (all rows; load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
  main()
