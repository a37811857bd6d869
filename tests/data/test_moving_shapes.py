"""moving_shapes: deterministic clips, shapes that bounce inside the frame with the drawn class, prompt switches
with per-frame labels; the grain pipeline serves video batches; the video-folder loader reads frame folders and
.npy videos; bad input errors."""
import os

import numpy as np
import pytest
from PIL import Image

from arjax import config as config_lib
from arjax.data import moving_shapes, pipeline, shapes


def test_clips_are_deterministic_and_switch_once():
  a, b = moving_shapes.clip(3, frames=12), moving_shapes.clip(3, frames=12)
  np.testing.assert_array_equal(a["video"], b["video"])
  assert not np.array_equal(a["video"], moving_shapes.clip(3, "test", frames=12)["video"])
  assert a["video"].shape == (12, 32, 32, 3) and a["video"].dtype == np.uint8
  switches = 0
  for i in range(40):
    c = moving_shapes.clip(i, frames=12, switch_prob=0.5, min_segment=3)
    changes = np.flatnonzero(np.diff(c["labels"])) + 1
    assert len(changes) <= 1 and c["labels"][0] == c["label"]
    if len(changes):
      switches += 1
      assert changes[0] == c["switch"] and 3 <= c["switch"] <= 9
    else:
      assert c["switch"] == -1
  assert 8 <= switches <= 32


def test_frames_show_the_labelled_shape_moving_inside_the_image():
  """Every frame's foreground (pixels far from the flat background) is the label's colour, and its centroid moves
  by at most the top speed, always inside the image; a brute-force centroid per frame."""
  c = moving_shapes.clip(5, frames=10, switch_prob=0.0)
  rgb = np.asarray(shapes.COLOURS[shapes.DEFAULT_COLOURS[int(c["label"]) % 2]], np.float64)
  centres = []
  for frame in c["video"].astype(np.float64):
    background = np.median(frame.reshape(-1, 3), 0)
    fg = np.linalg.norm(frame - background, axis=-1) > 60
    assert fg.sum() > 10
    assert np.linalg.norm(frame[fg].mean(0) - rgb) < 60
    ys, xs = np.nonzero(fg)
    centres.append((ys.mean(), xs.mean()))
  steps = np.linalg.norm(np.diff(np.asarray(centres), axis=0), axis=1)
  assert steps.max() < moving_shapes.SPEED_RANGE[1] + 1.5 and steps.mean() > 0.2


def test_pipeline_serves_video_batches():
  cfg = config_lib.load_config("configs/moving_shapes/longlive.py:smoke")
  batch = next(iter(pipeline.make_dataset(cfg.data)))
  assert batch["video"].shape == (4, cfg.data.frames, 32, 32, 3) and batch["labels"].shape == (4, cfg.data.frames)
  assert -1 <= batch["video"].min() and batch["video"].max() <= 1
  np.testing.assert_array_equal(batch["labels"][:, 0], batch["label"])


def test_video_folder_reads_frame_folders_and_npy(tmp_path):
  rs = np.random.default_rng(0)
  clip = rs.integers(0, 256, (5, 40, 48, 3), dtype=np.uint8)
  os.makedirs(tmp_path / "cats" / "v0")
  for t, frame in enumerate(clip):
    Image.fromarray(frame).save(tmp_path / "cats" / "v0" / f"{t:03d}.png")
  os.makedirs(tmp_path / "dogs")
  np.save(tmp_path / "dogs" / "v1.npy", clip[::-1].copy())
  src = moving_shapes.VideoFolderSource(str(tmp_path), image_size=32, frames=4)
  assert len(src) == 2 and src.class_names == ["cats", "dogs"]
  a, b = src[0], src[1]
  assert a["video"].shape == (4, 32, 32, 3) and list(a["labels"]) == [0] * 4 and b["label"] == 1
  from arjax.data import sources
  np.testing.assert_array_equal(a["video"][1], sources.fit_image(Image.fromarray(clip[1]), 32))
  np.testing.assert_array_equal(b["video"][0], sources.fit_image(Image.fromarray(clip[4]), 32))
  with pytest.raises(ValueError, match="expected at least frames=6"):
    moving_shapes.VideoFolderSource(str(tmp_path), frames=6)[0]
  np.save(tmp_path / "dogs" / "v2.npy", np.zeros((4, 8, 8), np.uint8))
  with pytest.raises(ValueError, match=r"expected uint8 \[T,H,W,3\]"):
    moving_shapes.VideoFolderSource(str(tmp_path), frames=4)[2]
  with pytest.raises(FileNotFoundError):
    moving_shapes.VideoFolderSource(str(tmp_path / "missing"))


def test_bad_arguments():
  with pytest.raises(ValueError, match="split"):
    moving_shapes.clip(0, split="val")
  with pytest.raises(ValueError, match="switch_prob"):
    moving_shapes.clip(0, switch_prob=2.0)
  with pytest.raises(IndexError):
    moving_shapes.MovingShapesSource(num_examples=3)[3]
