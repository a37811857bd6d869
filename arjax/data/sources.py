"""Data sources for real data: TFDS datasets (array_record, read without TensorFlow) and image folders.

Both yield the same example dict as `shapes`: image uint8 [S,S,3], label int32, caption str.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CAPTION_KEYS = ("caption", "text")


def fit_image(image: Image.Image, image_size: int) -> np.ndarray:
  """Resize (shorter side -> image_size, bicubic) and center-crop a PIL image to uint8 [S,S,3]."""
  image = image.convert("RGB")
  w, h = image.size
  scale = image_size / min(w, h)
  nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
  if (nw, nh) != (w, h):
    image = image.resize((nw, nh), Image.BICUBIC)
  left, top = (nw - image_size) // 2, (nh - image_size) // 2
  return np.asarray(image.crop((left, top, left + image_size, top + image_size)), np.uint8)


def _as_pil(image) -> Image.Image:
  """A PIL image from encoded bytes (PNG/JPEG) or a uint8 array [H,W], [H,W,1] or [H,W,3]."""
  if isinstance(image, (bytes, np.bytes_)):
    return Image.open(io.BytesIO(image))
  array = np.asarray(image)
  if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3)):
    raise ValueError(f"image of dtype {array.dtype} and shape {array.shape}: expected uint8 [H,W], [H,W,1] or "
                     "[H,W,3], or PNG/JPEG bytes")
  return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)


def _text(value) -> str:
  return value.decode("utf-8", errors="replace") if isinstance(value, (bytes, np.bytes_)) else str(value)


class TfdsSource:
  """grain RandomAccessDataSource over a TFDS data source, mapped to the arjax example dict."""

  def __init__(self, source, name: str, image_size: int):
    self.source, self.name, self.image_size = source, name, image_size
    features = source.dataset_info.features
    self.class_names = list(getattr(features["label"], "names", None) or []) if "label" in features else []

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    record = self.source[int(index)]
    if "image" not in record:
      raise ValueError(f"TFDS dataset {self.name!r} record has keys {sorted(record)}; expected an 'image' feature")
    label = int(record.get("label", -1))
    caption = next((_text(record[k]) for k in CAPTION_KEYS if k in record), None)
    if caption is None:  # no caption feature: use the class name when there is one
      caption = self.class_names[label] if 0 <= label < len(self.class_names) else ""
    return dict(image=fit_image(_as_pil(record["image"]), self.image_size), label=np.int32(label),
                caption=caption)

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, n={len(self)}, image_size={self.image_size})"


def tfds_source(name: str, split: str, data_dir: str | None = None, image_size: int = 32) -> TfdsSource:
  """The TFDS dataset `name` (prepared as array_record under data_dir or $TFDS_DATA_DIR) as a random-access source."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"data name 'tfds:{name}' needs tensorflow-datasets: pip install -e '.[tfds]'") from e
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")  # tfds itself reads it only once, at import
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for missing / unprepared datasets
    raise ValueError(f"TFDS dataset {name!r} split {split!r} could not be opened from data_dir={data_dir!r} "
                     f"(it must be prepared with file_format='array_record'): {type(e).__name__}: {e}") from e
  return TfdsSource(source, name, image_size)


class ImageFolderSource:
  """grain RandomAccessDataSource over root/<class>/<image>.{png,jpg,jpeg}; labels follow sorted class names."""

  def __init__(self, root: str, image_size: int = 32):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"image folder {root!r} does not exist")
    self.root, self.image_size = root, image_size
    self.class_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not self.class_names:
      raise ValueError(f"image folder {root!r} has no class sub-folders; expected {root}/<class>/<image>.png")
    self.files = []
    for label, name in enumerate(self.class_names):
      folder = os.path.join(root, name)
      images = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
      if not images:
        raise ValueError(f"class folder {folder!r} has no images; expected files ending in {IMAGE_EXTENSIONS}")
      self.files += [(os.path.join(folder, f), label) for f in images]

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict:
    path, label = self.files[int(index)]
    try:
      with Image.open(path) as image:
        pixels = fit_image(image, self.image_size)
    except OSError as e:
      raise ValueError(f"image file {path!r} could not be decoded: {e}") from e
    return dict(image=pixels, label=np.int32(label), caption=self.class_names[label])

  def __repr__(self) -> str:
    return f"ImageFolderSource({self.root!r}, n={len(self)}, image_size={self.image_size})"
