"""Canonical JPEG bytes as tokens (JPEG-LM): no learned tokenizer, the codec is the tokenizer.

Every image is written by Pillow (libjpeg) as a baseline JPEG at a fixed quality with 4:2:0 chroma subsampling,
the standard (Annex K) Huffman tables, a restart interval of one MCU (an RST marker between every two
consecutive MCUs: n_mcu - 1 of them, none after the last), and `streamtype=2`: an abbreviated stream without
the quantisation (DQT) and Huffman (DHT) tables, which are the same for every image at one quality. So every
file of one size starts with the same header (SOI, APP0, SOF0, DRI, SOS) and the bytes the LM models are that
header, the entropy-coded MCUs separated by RST markers, and EOI.

  tokens = encode(image_HW3_uint8)     # uint8 [n]: the abbreviated stream
  data = to_file(tokens)               # bytes: the complete file (the shared tables spliced back in)
  image = decode(tokens)               # uint8 [H, W, 3]

Pillow does all of this itself (`streamtype`, `restart_marker_blocks`, `subsampling`); the only byte surgery
is in to_file: the DQT segments of Pillow's tables-only stream (`streamtype=1`) go in before SOF0 and its DHT
segments after it, which reproduces Pillow's own full stream byte for byte.
"""
from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image

QUALITY_RANGE = (1, 95)
SOI, SOF0, DHT, DQT, EOI = 0xD8, 0xC0, 0xC4, 0xDB, 0xD9


def _check_quality(quality):
  if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not (
      QUALITY_RANGE[0] <= quality <= QUALITY_RANGE[1]):
    raise ValueError(f"quality must be an int in [{QUALITY_RANGE[0]}, {QUALITY_RANGE[1]}], got {quality!r}")
  return int(quality)


def _save(image: Image.Image, quality: int, streamtype: int) -> bytes:
  out = io.BytesIO()
  image.save(out, "JPEG", quality=quality, subsampling="4:2:0", optimize=False, progressive=False,
             streamtype=streamtype, restart_marker_blocks=1)
  return out.getvalue()


def segments(data: bytes) -> list[tuple[int, bytes]]:
  """The marker segments of a JPEG header as (marker, whole segment bytes), from SOI up to and including SOS."""
  if data[:2] != b"\xff\xd8":
    raise ValueError("not a JPEG stream: it does not start with SOI (FF D8)")
  out, i = [(SOI, data[:2])], 2
  while i + 4 <= len(data) and data[i] == 0xFF:
    marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
    out.append((marker, data[i:i + 2 + length]))
    i += 2 + length
    if marker == 0xDA:  # SOS: the entropy-coded data follows
      break
  return out


@functools.lru_cache(maxsize=None)
def tables(quality: int = 25) -> tuple[bytes, bytes]:
  """(DQT segments, DHT segments) shared by every image at `quality`, from Pillow's tables-only stream."""
  data = _save(Image.new("RGB", (16, 16)), _check_quality(quality), streamtype=1)
  segs = segments(data[:-2])  # drop EOI
  return (b"".join(s for m, s in segs if m == DQT), b"".join(s for m, s in segs if m == DHT))


def encode(image_HW3_uint8, quality=25) -> np.ndarray:
  """The canonical abbreviated JPEG stream of one RGB uint8 image [H, W, 3], as uint8 [n]."""
  quality = _check_quality(quality)
  image = np.asarray(image_HW3_uint8)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
    raise ValueError(f"encode needs an RGB image uint8 [H, W, 3], got {image.dtype} {image.shape}")
  return np.frombuffer(_save(Image.fromarray(image, "RGB"), quality, streamtype=2), np.uint8).copy()


def _as_bytes(tokens) -> bytes:
  if isinstance(tokens, (bytes, bytearray)):
    return bytes(tokens)
  arr = np.asarray(tokens)
  if arr.ndim != 1 or arr.dtype.kind not in "ui" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
    raise ValueError(f"JPEG tokens must be bytes or a 1-D integer array of byte values 0..255, got "
                     f"{arr.dtype} {arr.shape}")
  return arr.astype(np.uint8).tobytes()


def to_file(tokens, quality=25) -> bytes:
  """The complete JPEG file of an abbreviated stream: the shared DQT tables before SOF0, the DHT after it."""
  data = _as_bytes(tokens)
  dqt, dht = tables(_check_quality(quality))
  header = segments(data)
  if header[-1][0] != 0xDA or not any(m == SOF0 for m, _ in header):
    raise ValueError("JPEG tokens do not hold a baseline header (SOI ... SOF0 ... SOS)")
  out = []
  for marker, seg in header:
    if marker == SOF0:
      out += [dqt, seg, dht]
    else:
      out.append(seg)
  return b"".join(out) + data[sum(len(s) for _, s in header):]


def decode(tokens, quality=25) -> np.ndarray:
  """The RGB image uint8 [H, W, 3] of an abbreviated stream (Pillow; a truncated file is an error)."""
  with Image.open(io.BytesIO(to_file(tokens, quality))) as im:
    im.load()
    return np.asarray(im.convert("RGB"))
