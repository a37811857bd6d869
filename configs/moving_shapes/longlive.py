"""LongLive-style frame-level AR video on `moving_shapes` (per-frame KL-VAE latents, window + frame sink).

  python -m arjax.main --config configs/moving_shapes/longlive.py --workdir runs/longlive \
      --config.tokenizer.workdir=runs/vae
  cp -r runs/longlive runs/longlive_long   # streaming long tuning continues the frame-AR run for 150 steps:
  python -m arjax.main --config configs/moving_shapes/longlive.py:long --workdir runs/longlive_long \
      --config.tokenizer.workdir=runs/vae --config.train.steps=1350
  python scripts/stream_video.py --config configs/moving_shapes/longlive.py --workdir runs/longlive \
      --tokenizer runs/vae --frames 256 --switch 64:3,128:6 --out /tmp/longlive_stream.gif
  python -m arjax.main --config configs/moving_shapes/longlive.py:smoke --workdir /tmp/longlive
Presets: `vq` frames as the code vectors of the VQ tokenizer (runs/vq) instead of KL-VAE latents; (none) demo size, frame-AR teacher forcing on 16-frame clips; `long` streaming long tuning on 64-frame
clips (the last `window` frames supervised through a detached ring cache); `smoke` tiny, untrained VAE.
`model.window` and `model.sink` count frames; a frame is (8/patch)^2 tokens of patch x patch VAE latent cells.
"""
import os

import ml_collections

from arjax.config import base_config, parse_arg

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = os.path.join(HERE, "..", "shapes")


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False, long=False, vq=False)
  c = base_config()
  tok = os.path.join(SHAPES, "vq.py" if arg.vq else "vae.py")
  c.tokenizer = ml_collections.ConfigDict(dict(config=tok, workdir="", ema=True))
  c.model = dict(name="next_frame", num_classes=8, width=96, patch=4, window=4, sink=1, frames=16, label_drop=0.1,
                 train_mode="frame_ar", long=dict(self_prob=0.5, self_t=0.6),
                 flow=dict(steps=8, steps_end=0, solver="euler", sde_scale=1.0),
                 transformer=dict(depth=3, heads=2, kv_heads=2, mlp="swiglu", mlp_ratio=3.0, norm="rms",
                                  qk_norm=True, impl="auto"))
  c.data.update(name="moving_shapes", batch_size=16, num_examples=20_000)
  with c.data.unlocked():
    c.data.update(frames=16, max_shapes=1, switch_prob=0.5)
  c.optim.update(lr=1e-3, warmup_steps=100, weight_decay=0.05, b2=0.95)
  c.train.update(steps=1200, log_every=50, ckpt_every=400, ema_decay=0.995, num_sample_images=8)
  c.sample.update(temperature=1.0, cfg_scale=1.0)
  # streamed 32-frame videos with a prompt switch at frame 16, judged per frame (arjax.eval.video); every=0: run it
  # with python -m arjax.evaluate (streaming evaluation is slow on a CPU)
  c.evals.video = dict(type="video_judge", every=0, num_samples=32, batch_size=16, frames=32, switch_at=16, after=4)
  if arg.long:
    c.model.train_mode = "long"
    c.data.update(frames=64, batch_size=8)
    c.optim.update(lr=3e-4, warmup_steps=10)
    c.train.update(steps=150, log_every=10, ckpt_every=150)
  if arg.smoke:
    c.tokenizer.config = tok + ":smoke"
    c.model.update(width=24, window=2, sink=1, frames=4)
    c.model.flow.steps = 2
    c.model.transformer.update(depth=1, heads=2, kv_heads=2)
    c.data.update(batch_size=4, num_examples=16, frames=4 if not arg.long else 6)
    c.optim.warmup_steps = 2
    c.train.update(steps=3, log_every=1, ckpt_every=3, num_sample_images=2, progress=False)
    c.evals = ml_collections.ConfigDict()
  return c
