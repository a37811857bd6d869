"""The embedded `shapes` dataset: procedural RGB images of one coloured shape, with labels and captions.

Every example is a pure function of (seed, split, index); nothing is stored on disk. A class is a
(shape, colour) pair: label = shape_idx * len(colours) + colour_idx, so with the default colours
('red', 'blue') the classes are: 0 red circle, 1 blue circle, 2 red square, 3 blue square,
4 red triangle, 5 blue triangle, 6 red cross, 7 blue cross (see `class_names`).
Captions read "a large red circle at the top left" / "a small blue cross in the center".
"""
from __future__ import annotations

import functools

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 45, 40), "green": (40, 185, 60), "blue": (45, 85, 230), "yellow": (230, 205, 40)}
DEFAULT_COLOURS = ("red", "blue")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
SIZES = ("small", "large")
SPLITS = {"train": 0, "test": 1}
SIZE_RANGE = (0.15, 0.28)  # half-extent of a shape, as a fraction of the image side
CELL_MARGIN = 1 / 24  # a shape's centre keeps this far (fraction of the side) from its 3x3 cell's edges
COLOUR_JITTER = 25
SUPERSAMPLE = 4


def check_colours(colours) -> tuple:
  """Validates a colour tuple against COLOURS and returns it as a tuple."""
  colours = tuple(colours)
  unknown = [c for c in colours if c not in COLOURS]
  if unknown or not colours or len(set(colours)) != len(colours):
    raise ValueError(f"colours={colours!r}: expected distinct names from {sorted(COLOURS)}")
  return colours


def class_names(colours=DEFAULT_COLOURS) -> list[str]:
  """Class names ('red circle', ...) indexed by label = shape_idx * len(colours) + colour_idx."""
  return [f"{c} {s}" for s in SHAPES for c in check_colours(colours)]


CLASS_NAMES = class_names()


def caption(shape: int, colour: str, position: int, size: int) -> str:
  """The caption for one example's attributes."""
  where = "in the center" if POSITIONS[position] == "center" else f"at the {POSITIONS[position]}"
  return f"a {SIZES[size]} {colour} {SHAPES[shape]} {where}"


@functools.lru_cache(maxsize=None)
def _subpixel_centres(image_size: int) -> np.ndarray:
  """Sub-pixel centre coordinates along one axis, in pixel units."""
  return ((np.arange(image_size * SUPERSAMPLE) + 0.5) / SUPERSAMPLE).astype(np.float32)


def _inside(shape: int, dx, dy, s: float):
  """Boolean mask of points (dx, dy) relative to the centre that lie inside a shape of half-extent s."""
  ax, ay = np.abs(dx), np.abs(dy)
  if shape == 0:
    return dx * dx + dy * dy <= s * s
  if shape == 1:
    return np.maximum(ax, ay) <= 0.8 * s
  if shape == 2:  # upright triangle: apex at -0.9 s, base at +0.9 s (box-centred), half-base 0.95 s
    return (dy <= 0.9 * s) & (ax <= (0.95 / 1.8) * (dy + 0.9 * s))
  return (np.minimum(ax, ay) <= 0.3 * s) & (np.maximum(ax, ay) <= 0.9 * s)


def coverage(shape: int, cx: float, cy: float, s: float, image_size: int) -> np.ndarray:
  """Anti-aliased coverage in [0,1], float32 [S,S], of a shape centred at (cx, cy) (pixel units)."""
  x0, y0 = max(int(cx - s) - 1, 0), max(int(cy - s) - 1, 0)
  x1, y1 = min(int(cx + s) + 2, image_size), min(int(cy + s) + 2, image_size)
  u = _subpixel_centres(image_size)
  dx = u[x0 * SUPERSAMPLE:x1 * SUPERSAMPLE][None, :] - cx
  dy = u[y0 * SUPERSAMPLE:y1 * SUPERSAMPLE][:, None] - cy
  sub = _inside(shape, dx, dy, s).astype(np.float32)
  alpha = np.zeros((image_size, image_size), np.float32)
  alpha[y0:y1, x0:x1] = sub.reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE).sum(axis=(1, 3))
  alpha *= 1.0 / SUPERSAMPLE**2
  return alpha


def _centre(u: float, cell: int, s: float, image_size: int) -> float:
  """A centre coordinate inside 3x3-grid cell `cell` (0..2) that keeps the shape inside the image; u ~ U[0,1)."""
  third, margin = image_size / 3, CELL_MARGIN * image_size
  lo, hi = max(cell * third + margin, s), min((cell + 1) * third - margin, image_size - s)
  return lo + u * max(hi - lo, 0.0)


def example(index: int, split: str = "train", seed: int = 0, image_size: int = 32,
            colours=DEFAULT_COLOURS) -> dict:
  """One example: image uint8 [S,S,3], label, caption and the attribute ints shape/colour/position/size."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r}: expected one of {sorted(SPLITS)}")
  colours = check_colours(colours)
  rng = np.random.default_rng((seed, SPLITS[split], index))
  u = rng.random(13)
  shape, colour, position = int(u[0] * len(SHAPES)), int(u[1] * len(colours)), int(u[2] * 9)
  lo, hi = SIZE_RANGE
  frac = lo + (hi - lo) * u[3]
  s = frac * image_size
  cy, cx = _centre(u[4], position // 3, s, image_size), _centre(u[5], position % 3, s, image_size)
  fg = np.asarray(COLOURS[colours[colour]], np.float32) + (COLOUR_JITTER * (2 * u[6:9] - 1)).astype(np.float32)
  bg = (25 + 45 * u[9] + 16 * (u[10:13] - 0.5)).astype(np.float32)
  noise = (rng.random((image_size, image_size, 3), dtype=np.float32) - 0.5) * 10  # uniform, std ~2.9
  alpha = coverage(shape, cx, cy, s, image_size)[..., None]
  image = np.clip(bg + noise + alpha * (np.clip(fg, 0, 255) - bg) + 0.5, 0, 255).astype(np.uint8)
  size = int(frac >= (lo + hi) / 2)
  return dict(image=image, label=np.int32(shape * len(colours) + colour),
              caption=caption(shape, colours[colour], position, size),
              shape=np.int32(shape), colour=np.int32(colour), position=np.int32(position), size=np.int32(size))


class ShapesSource:
  """grain RandomAccessDataSource over `num_examples` procedural `shapes` examples of one split."""

  def __init__(self, split: str = "train", num_examples: int = 50_000, image_size: int = 32,
               colours=DEFAULT_COLOURS, seed: int = 0):
    if split not in SPLITS:
      raise ValueError(f"split={split!r}: expected one of {sorted(SPLITS)}")
    if num_examples <= 0 or image_size < 8:
      raise ValueError(f"num_examples={num_examples}, image_size={image_size}: expected > 0 and >= 8")
    self.split, self.num_examples, self.image_size, self.seed = split, int(num_examples), int(image_size), seed
    self.colours = check_colours(colours)
    self.class_names = class_names(self.colours)

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for ShapesSource of length {self.num_examples}")
    return example(index, self.split, self.seed, self.image_size, self.colours)

  def __repr__(self) -> str:
    return (f"ShapesSource(split={self.split!r}, num_examples={self.num_examples}, "
            f"image_size={self.image_size}, colours={self.colours}, seed={self.seed})")
