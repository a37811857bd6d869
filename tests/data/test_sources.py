"""Real-data sources: an image folder written by the test, and a tiny TFDS dataset built locally without
TensorFlow (array_record, Tensor / ClassLabel / Text features), read back through tfds.data_source."""
import numpy as np
import pytest
from PIL import Image

from arjax.data import pipeline, sources


def two_colour_image(w, h):
  """Left half red, right half blue (uint8 [h,w,3])."""
  x = np.zeros((h, w, 3), np.uint8)
  x[:, :w // 2, 0] = 255
  x[:, w // 2:, 2] = 255
  return x


def test_image_folder(tmp_path):
  (tmp_path / "zebra").mkdir()
  (tmp_path / "apple").mkdir()
  Image.fromarray(two_colour_image(64, 32)).save(tmp_path / "zebra" / "wide.png")
  Image.new("RGB", (20, 30), (0, 200, 0)).save(tmp_path / "apple" / "b.jpg", quality=95)
  Image.new("L", (16, 16), 128).save(tmp_path / "apple" / "a.PNG")
  (tmp_path / "apple" / "notes.txt").write_text("not an image")
  src = sources.ImageFolderSource(str(tmp_path), image_size=16)
  assert len(src) == 3 and src.class_names == ["apple", "zebra"]
  a, b, wide = src[0], src[1], src[2]
  assert [e["label"] for e in (a, b, wide)] == [0, 0, 1]
  assert [e["caption"] for e in (a, b, wide)] == ["apple", "apple", "zebra"]
  for e in (a, b, wide):
    assert e["image"].shape == (16, 16, 3) and e["image"].dtype == np.uint8
  np.testing.assert_array_equal(a["image"], np.full((16, 16, 3), 128))  # grayscale -> RGB
  assert np.abs(b["image"].astype(int) - [0, 200, 0]).max() <= 3  # JPEG round-off
  # 64x32 -> 32x16, center crop 16 keeps columns 8..24: the crop's left half red, right half blue
  np.testing.assert_array_equal(wide["image"][:, :7], np.broadcast_to([255, 0, 0], (16, 7, 3)))
  np.testing.assert_array_equal(wide["image"][:, 9:], np.broadcast_to([0, 0, 255], (16, 7, 3)))


def test_image_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing_dir"):
    sources.ImageFolderSource(str(tmp_path / "missing_dir"))
  with pytest.raises(ValueError, match="no class sub-folders"):
    sources.ImageFolderSource(str(tmp_path))
  (tmp_path / "empty_class").mkdir()
  with pytest.raises(ValueError, match="empty_class.*has no images"):
    sources.ImageFolderSource(str(tmp_path))
  (tmp_path / "empty_class" / "bad.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match="bad.png.*could not be decoded"):
    sources.ImageFolderSource(str(tmp_path))[0]


def build_tiny_tfds(data_dir, with_caption=True):
  """Builds 'tiny_arjax' (or 'tiny_arjax_nocap') in data_dir: 6 train / 3 test 12x10 images of value 20*i."""
  tfds = pytest.importorskip("tensorflow_datasets")
  features = dict(image=tfds.features.Tensor(shape=(12, 10, 3), dtype=np.uint8),
                  label=tfds.features.ClassLabel(names=["circle", "square", "cross"]))
  if with_caption:
    features["caption"] = tfds.features.Text()

  class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):  # read back from files, by name
    VERSION = tfds.core.Version("1.0.0")
    name = "tiny_arjax" if with_caption else "tiny_arjax_nocap"

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 6), "test": self._generate_examples(6, 9)}

    def _generate_examples(self, start, stop):
      for i in range(start, stop):
        ex = dict(image=np.full((12, 10, 3), 20 * i, np.uint8), label=i % 3)
        if with_caption:
          ex["caption"] = f"example {i}"
        yield i, ex

  Builder(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  build_tiny_tfds(data_dir)
  build_tiny_tfds(data_dir, with_caption=False)
  return str(data_dir)


def test_tfds_source(tfds_dir):
  src = sources.tfds_source("tiny_arjax", "train", data_dir=tfds_dir, image_size=8)
  assert len(src) == 6 and src.class_names == ["circle", "square", "cross"]
  seen = set()
  for j in range(len(src)):
    e = src[j]
    i = int(e["caption"].split()[-1])  # the generator wrote "example {i}"
    seen.add(i)
    assert e["label"] == i % 3 and e["label"].dtype == np.int32
    np.testing.assert_array_equal(e["image"], np.full((8, 8, 3), 20 * i))
  assert seen == set(range(6))
  nocap = sources.tfds_source("tiny_arjax_nocap", "test", data_dir=tfds_dir)
  for j in range(3):
    e = nocap[j]
    assert e["caption"] == ["circle", "square", "cross"][e["label"]]  # class name stands in for a caption
  with pytest.raises(ValueError, match="no_such_dataset"):
    sources.tfds_source("no_such_dataset", "train", data_dir=tfds_dir)


def test_tfds_through_pipeline(tfds_dir, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)
  from arjax.config import base_config
  cfg = base_config().data
  cfg.update(name="tfds:tiny_arjax", batch_size=3, image_size=8, shuffle=True, repeat=True)
  it = iter(pipeline.make_dataset(cfg, split="test", process_index=0, process_count=1))
  batch = next(it)
  assert batch["image"].shape == (3, 8, 8, 3) and batch["image"].dtype == np.float32
  captions = sorted(pipeline.decode_caption(c) for c in batch["caption"])
  assert captions == ["example 6", "example 7", "example 8"]
  for img, cap, label in zip(batch["image"], batch["caption"], batch["label"]):
    i = int(pipeline.decode_caption(cap).split()[-1])
    assert label == i % 3
    np.testing.assert_allclose(img, 20 * i / 127.5 - 1, atol=1e-6)
