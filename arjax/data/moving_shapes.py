"""The embedded `moving_shapes` video dataset, and a loader for a folder of real videos.

A clip is a pure function of (seed, split, index): T frames of 1..max_shapes shapes of one class (a
(shape, colour) pair, labels as in `shapes`) moving with constant velocity and bouncing off the walls, over a
noisy flat background. The class is the segment's prompt; with probability `switch_prob` the prompt switches
once, at a frame in [min_segment, T - min_segment], to another class (the shapes keep their motion and change
shape or colour there). Each clip carries per-frame labels and the caption of its first segment.

Video folders: root/<class>/<video>/ holding frame images (sorted by name) or root/<class>/<video>.npy
(uint8 [T, H, W, 3]); every video gives its first `frames` frames, resized and centre-cropped.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from arjax.data import shapes, sources

SPEED_RANGE = (0.6, 1.8)  # pixels per frame at 32x32 (scaled with the image side)
SIZE_RANGE = (0.16, 0.24)  # half-extent, fraction of the side


def _bounce(p0: float, v: float, lo: float, hi: float, t_T: np.ndarray) -> np.ndarray:
  """Positions at times t of a point starting at p0 with velocity v, reflected between lo and hi."""
  span = max(hi - lo, 1e-6)
  u = np.mod(p0 - lo + v * t_T, 2 * span)
  return lo + np.where(u > span, 2 * span - u, u)


def clip(index: int, split: str = "train", seed: int = 0, image_size: int = 32, frames: int = 16,
         colours=shapes.DEFAULT_COLOURS, max_shapes: int = 1, switch_prob: float = 0.5, min_segment: int = 4) -> dict:
  """One clip: video uint8 [T,S,S,3], labels int32 [T] (per frame), label (first segment), switch (frame of the
  prompt switch, -1 if none), caption (first segment) and the attribute ints of the first segment."""
  if split not in shapes.SPLITS:
    raise ValueError(f"split={split!r}: expected one of {sorted(shapes.SPLITS)}")
  colours = shapes.check_colours(colours)
  if frames < 1 or max_shapes < 1 or not 0.0 <= switch_prob <= 1.0:
    raise ValueError(f"frames={frames}, max_shapes={max_shapes}, switch_prob={switch_prob}: expected frames >= 1, "
                     "max_shapes >= 1 and switch_prob in [0, 1]")
  rng = np.random.default_rng((seed, shapes.SPLITS[split], index, 7))
  num_classes = len(shapes.SHAPES) * len(colours)
  first = int(rng.integers(num_classes))
  labels_T = np.full(frames, first, np.int32)
  switch = -1
  if frames >= 2 * min_segment and rng.random() < switch_prob:
    switch = int(rng.integers(min_segment, frames - min_segment + 1))
    labels_T[switch:] = (first + 1 + rng.integers(num_classes - 1)) % num_classes
  bg = 25 + 45 * rng.random() + 16 * (rng.random(3) - 0.5)
  t_T = np.arange(frames, dtype=np.float64)
  objects = []
  for _ in range(int(rng.integers(1, max_shapes + 1))):
    s = image_size * rng.uniform(*SIZE_RANGE)
    speed, angle = rng.uniform(*SPEED_RANGE) * image_size / 32, rng.uniform(0, 2 * np.pi)
    cx = _bounce(rng.uniform(s, image_size - s), speed * np.cos(angle), s, image_size - s, t_T)
    cy = _bounce(rng.uniform(s, image_size - s), speed * np.sin(angle), s, image_size - s, t_T)
    objects.append((s, cx, cy, rng.uniform(-1, 1, 3)))  # per-shape colour jitter
  video = np.empty((frames, image_size, image_size, 3), np.uint8)
  for t in range(frames):
    shape, colour = divmod(int(labels_T[t]), len(colours))
    frame = bg + (rng.random((image_size, image_size, 3)) - 0.5) * 10
    for s, cx, cy, jitter in objects:
      fg = np.clip(np.asarray(shapes.COLOURS[colours[colour]], np.float64) + shapes.COLOUR_JITTER * jitter, 0, 255)
      alpha = shapes.coverage(shape, float(cx[t]), float(cy[t]), s, image_size)[..., None]
      frame = frame + alpha * (fg - frame)
    video[t] = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
  shape, colour = divmod(first, len(colours))
  s, cx, cy, _ = objects[0]
  position = int(min(cy[0] * 3 // image_size, 2) * 3 + min(cx[0] * 3 // image_size, 2))
  return dict(video=video, labels=labels_T, label=np.int32(first), switch=np.int32(switch),
              caption=shapes.caption(shape, colours[colour], position, int(s >= image_size * np.mean(SIZE_RANGE))),
              shape=np.int32(shape), colour=np.int32(colour))


class MovingShapesSource:
  """grain RandomAccessDataSource over `num_examples` procedural `moving_shapes` clips of one split."""

  def __init__(self, split: str = "train", num_examples: int = 50_000, image_size: int = 32, frames: int = 16,
               colours=shapes.DEFAULT_COLOURS, seed: int = 0, max_shapes: int = 1, switch_prob: float = 0.5):
    if split not in shapes.SPLITS:
      raise ValueError(f"split={split!r}: expected one of {sorted(shapes.SPLITS)}")
    if num_examples <= 0 or image_size < 8 or frames < 1:
      raise ValueError(f"num_examples={num_examples}, image_size={image_size}, frames={frames}: expected > 0, >= 8 "
                       "and >= 1")
    self.split, self.num_examples, self.image_size, self.frames = split, int(num_examples), int(image_size), frames
    self.colours, self.seed = shapes.check_colours(colours), seed
    self.max_shapes, self.switch_prob = int(max_shapes), float(switch_prob)
    self.class_names = shapes.class_names(self.colours)

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for MovingShapesSource of length {self.num_examples}")
    return clip(index, self.split, self.seed, self.image_size, self.frames, self.colours, self.max_shapes,
                self.switch_prob)

  def __repr__(self) -> str:
    return (f"MovingShapesSource(split={self.split!r}, num_examples={self.num_examples}, image_size="
            f"{self.image_size}, frames={self.frames}, max_shapes={self.max_shapes}, switch_prob={self.switch_prob})")


def _read_frames(path: str, frames: int, image_size: int) -> np.ndarray:
  """The first `frames` frames of one video (a folder of images or a .npy) as uint8 [frames, S, S, 3]."""
  if path.endswith(".npy"):
    array = np.load(path, allow_pickle=False, mmap_mode="r")
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
      raise ValueError(f"video {path!r} has dtype {array.dtype} and shape {array.shape}; expected uint8 [T,H,W,3]")
    images = [Image.fromarray(np.asarray(f)) for f in array[:frames]]
  else:
    names = sorted(f for f in os.listdir(path) if f.lower().endswith(sources.IMAGE_EXTENSIONS))[:frames]
    images = []
    for name in names:
      try:
        with Image.open(os.path.join(path, name)) as image:
          images.append(image.copy())
      except OSError as e:
        raise ValueError(f"frame {os.path.join(path, name)!r} could not be decoded: {e}") from e
  if len(images) < frames:
    raise ValueError(f"video {path!r} has {len(images)} frames; expected at least frames={frames}")
  return np.stack([sources.fit_image(image, image_size) for image in images])


class VideoFolderSource:
  """grain RandomAccessDataSource over root/<class>/<video> (frame folders or .npy); labels follow sorted class
  names, every frame carries its video's label."""

  def __init__(self, root: str, image_size: int = 32, frames: int = 16):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"video folder {root!r} does not exist")
    self.root, self.image_size, self.frames = root, int(image_size), int(frames)
    self.class_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not self.class_names:
      raise ValueError(f"video folder {root!r} has no class sub-folders; expected {root}/<class>/<video>")
    self.videos = []
    for label, name in enumerate(self.class_names):
      folder = os.path.join(root, name)
      found = sorted(f for f in os.listdir(folder) if f.endswith(".npy") or os.path.isdir(os.path.join(folder, f)))
      if not found:
        raise ValueError(f"class folder {folder!r} has no videos; expected frame folders or .npy files")
      self.videos += [(os.path.join(folder, f), label) for f in found]

  def __len__(self) -> int:
    return len(self.videos)

  def __getitem__(self, index: int) -> dict:
    path, label = self.videos[int(index)]
    return dict(video=_read_frames(path, self.frames, self.image_size), labels=np.full(self.frames, label, np.int32),
                label=np.int32(label), switch=np.int32(-1), caption=self.class_names[label])

  def __repr__(self) -> str:
    return f"VideoFolderSource({self.root!r}, n={len(self)}, image_size={self.image_size}, frames={self.frames})"
