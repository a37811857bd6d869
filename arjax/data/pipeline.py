"""grain input pipelines: a data config -> batches dict(image f32 [B,H,W,3] in [-1,1], label i32 [B],
caption u8 [B,64] (utf-8 bytes, 0-padded)); video sources give video f32 [B,T,H,W,3] and labels i32 [B,T] in
place of image.

Data names: 'shapes' (embedded, procedural), 'tfds:<name>' (an array_record TFDS dataset under
$TFDS_DATA_DIR), 'folder:<path>' (<path>/<split>/<class>/*.png if <path>/<split> exists, else
<path>/<class>/*.png for every split); videos: 'moving_shapes' (embedded, procedural; data.frames, data.max_shapes,
data.switch_prob) and 'video_folder:<path>' (<path>[/<split>]/<class>/<video dir or .npy>; data.frames).
"""
from __future__ import annotations

import os

import grain
import jax
import numpy as np

from arjax.data import moving_shapes, shapes, sources

CAPTION_LEN = 64
DATA_NAMES = ("shapes", "tfds:<name>", "folder:<path>", "moving_shapes", "video_folder:<path>")
# Elements are whole batches; a small buffer keeps the 2-core budget for the model, not for read-ahead.
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


def make_source(data_cfg, split: str, num_examples: int | None = None):
  """The random-access source named by data_cfg.name for `split` (num_examples only applies to shapes)."""
  name = data_cfg.name
  if name == "shapes":
    return shapes.ShapesSource(split, num_examples or data_cfg.num_examples, data_cfg.image_size,
                               tuple(data_cfg.colours))
  if name == "moving_shapes":
    return moving_shapes.MovingShapesSource(split, num_examples or data_cfg.num_examples, data_cfg.image_size,
                                            data_cfg.get("frames", 16), tuple(data_cfg.colours),
                                            max_shapes=data_cfg.get("max_shapes", 1),
                                            switch_prob=data_cfg.get("switch_prob", 0.5))
  kind, _, arg = name.partition(":")
  if kind == "video_folder" and arg:
    split_dir = os.path.join(arg, split)
    return moving_shapes.VideoFolderSource(split_dir if os.path.isdir(split_dir) else arg, data_cfg.image_size,
                                           data_cfg.get("frames", 16))
  if kind == "tfds" and arg:
    return sources.tfds_source(arg, split, image_size=data_cfg.image_size)
  if kind == "folder" and arg:
    split_dir = os.path.join(arg, split)
    return sources.ImageFolderSource(split_dir if os.path.isdir(split_dir) else arg, data_cfg.image_size)
  raise ValueError(f"unknown data name {name!r} in config.data.name; expected one of {DATA_NAMES}")


def encode_caption(text: str, length: int = CAPTION_LEN) -> np.ndarray:
  """utf-8 bytes of `text`, truncated / 0-padded to uint8 [length]."""
  raw = text.encode("utf-8")[:length]
  out = np.zeros(length, np.uint8)
  out[:len(raw)] = np.frombuffer(raw, np.uint8)
  return out


def decode_caption(caption_L) -> str:
  """Inverse of encode_caption (drops the 0 padding)."""
  return bytes(np.asarray(caption_L, np.uint8)).rstrip(b"\0").decode("utf-8", errors="replace")


def to_model_example(ex: dict) -> dict:
  """A source example -> dict(image float32 [H,W,3] in [-1,1], label int32, caption uint8 [64]); a video example
  has video float32 [T,H,W,3] and labels int32 [T] in place of image."""
  if "video" in ex:
    return dict(video=ex["video"].astype(np.float32) / 127.5 - 1.0, labels=np.asarray(ex["labels"], np.int32),
                label=np.int32(ex["label"]), caption=encode_caption(ex["caption"]))
  return dict(image=ex["image"].astype(np.float32) / 127.5 - 1.0, label=np.int32(ex["label"]),
              caption=encode_caption(ex["caption"]))


def _process(process_index, process_count):
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index}, process_count={process_count}: expected 0 <= index < count")
  return process_index, process_count


def make_dataset(data_cfg, *, split: str = "train", seed: int = 0, process_index=None, process_count=None):
  """A grain IterDataset of this process's rows of each global batch (data_cfg.batch_size is global).

  Every process walks the same shuffled example stream; global batch k is examples [k*B, (k+1)*B) and process p
  of P reads rows [p*B/P, (p+1)*B/P) of it, so P processes assemble exactly the batch one process would read.
  Iterators are checkpointable: iter(ds).get_state() is a JSON-able dict (the same on every process);
  set_state resumes exactly.
  """
  process_index, process_count = _process(process_index, process_count)
  batch_size = data_cfg.batch_size
  if batch_size % process_count:
    raise ValueError(f"config.data.batch_size={batch_size} (the global batch) is not divisible by the "
                     f"{process_count} processes that read it")
  ds = grain.MapDataset.source(make_source(data_cfg, split))
  if len(ds) < batch_size:
    raise ValueError(f"config.data.batch_size={batch_size} exceeds the {len(ds)} examples of "
                     f"{data_cfg.name!r} split {split!r}")
  if data_cfg.shuffle:
    ds = ds.seed(seed).shuffle()  # reshuffled every epoch (the shuffle seed advances with the epoch)
  if data_cfg.repeat:
    ds = ds.repeat()
  else:  # whole global batches only, so every process yields the same number of batches
    ds = ds[:len(ds) // batch_size * batch_size]
  ds = ds.map(to_model_example).batch(batch_size // process_count, drop_remainder=True)
  return ds[process_index::process_count].to_iter_dataset(READ_OPTIONS)


def iterate_eval(data_cfg, split: str, num_examples: int, process_index: int = 0, process_count: int = 1):
  """The first num_examples examples of `split` in order, as batches (the last may be smaller); finite."""
  process_index, process_count = _process(process_index, process_count)
  source = make_source(data_cfg, split, num_examples)
  if num_examples > len(source):
    raise ValueError(f"num_examples={num_examples} exceeds the {len(source)} examples of {data_cfg.name!r} "
                     f"split {split!r}")
  ds = grain.MapDataset.source(source)[:num_examples][process_index::process_count]
  ds = ds.map(to_model_example).batch(data_cfg.batch_size, drop_remainder=False)
  return ds.to_iter_dataset(READ_OPTIONS)
