"""Image grids written as PNG."""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


def to_uint8(images):
  """[-1, 1] floats -> uint8."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images_NHWC, ncols=None, pad=1):
  """Tiles N images into one array; images in [-1, 1] (float) or uint8."""
  imgs = images_NHWC if images_NHWC.dtype == np.uint8 else to_uint8(images_NHWC)
  n, h, w, c = imgs.shape
  ncols = ncols or math.ceil(math.sqrt(n))
  nrows = math.ceil(n / ncols)
  out = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
  for i, im in enumerate(imgs):
    r, col = divmod(i, ncols)
    out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = im
  return out


def save_grid(images_NHWC, path, ncols=None, scale=1):
  """Writes a PNG grid (optionally upscaled with nearest neighbour for viewing)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  img = Image.fromarray(make_grid(images_NHWC, ncols))
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  img.save(path)
  return path
