"""The shapes judge: a short training run classifies held-out images; npz save/load is exact; bad files fail
with errors naming the file."""
import os

import numpy as np
import pytest

from arjax.eval import judge


@pytest.fixture(scope="module")
def trained():
  params = judge.train_judge(steps=200, batch_size=64, seed=0, progress=False)
  images, targets = judge.real_data("test", 600)
  return params, images, targets


def test_short_run_classifies_held_out_images(trained):
  params, images, targets = trained
  pred = judge.predict(params, images)
  assert set(pred) == {"label", "shape", "colour", "position"}
  acc = {k: float(np.mean(pred[k] == targets[k])) for k in pred}
  assert acc["label"] >= 0.9 and acc["shape"] >= 0.9 and acc["colour"] >= 0.99 and acc["position"] >= 0.9, acc
  assert judge.accuracy(params, images, targets["label"]) == pytest.approx(acc["label"])
  assert judge.accuracy(params, images, (targets["label"] + 1) % 8) < 0.1


def test_input_conventions_and_chunking(trained):
  params, images, _ = trained
  floats = images.astype(np.float32) / 127.5 - 1  # the pipeline / sampler convention
  f_uint8, f_float = judge.features(params, images), judge.features(params, floats)
  assert f_uint8.shape == (600, 128) and f_uint8.dtype == np.float32
  np.testing.assert_allclose(f_uint8, f_float, rtol=1e-4, atol=1e-4)
  # 600 images run as chunks of 512 + 88 (padded to 128): the same numbers as batches of 300 and of 1
  halves = np.concatenate([judge.features(params, floats[:300]), judge.features(params, floats[300:])])
  np.testing.assert_allclose(f_float, halves, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(judge.features(params, floats[7:8])[0], f_float[7], rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match=r"\[B,H,W,3\]"):
    judge.predict(params, floats[..., :1])


def test_save_load_round_trip(trained, tmp_path):
  params, images, _ = trained
  path = str(tmp_path / "judge.npz")
  judge.save_params(path, params, colours=("red", "blue"), image_size=32)
  with np.load(path, allow_pickle=False) as f:
    assert "params/conv_0/kernel" in f.files and "params/head_label/bias" in f.files
  loaded = judge.load_params(path)
  for k in ("label", "shape", "colour", "position"):
    np.testing.assert_array_equal(judge.predict(loaded, images)[k], judge.predict(params, images)[k])
  np.testing.assert_array_equal(judge.features(loaded, images), judge.features(params, images))
  again = judge.load_or_train(path, colours=("red", "blue"))  # exists: loaded, not retrained
  np.testing.assert_array_equal(judge.features(again, images[:16]), judge.features(params, images[:16]))
  with pytest.raises(ValueError, match="judge.npz.*colours"):
    judge.load_or_train(path, colours=("red", "green", "blue", "yellow"))


def test_bad_files_raise_clear_errors(trained, tmp_path):
  params, _, _ = trained
  with pytest.raises(FileNotFoundError, match="absent.npz"):
    judge.load_params(str(tmp_path / "absent.npz"))
  garbage = tmp_path / "garbage.npz"
  garbage.write_bytes(b"\x00not a zip archive" * 10)
  with pytest.raises(ValueError, match="garbage.npz.*corrupt"):
    judge.load_params(str(garbage))
  good = str(tmp_path / "good.npz")
  judge.save_params(good, params)
  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes(open(good, "rb").read()[: os.path.getsize(good) // 2])
  with pytest.raises(ValueError, match="truncated.npz.*corrupt"):
    judge.load_params(str(truncated))
  bare = tmp_path / "bare.npz"
  np.save(open(bare, "wb"), np.zeros(3))
  with pytest.raises(ValueError, match="bare.npz.*corrupt"):
    judge.load_params(str(bare))
  foreign = str(tmp_path / "foreign.npz")
  np.savez(foreign, weights=np.zeros(3))
  with pytest.raises(ValueError, match="foreign.npz.*JudgeNet"):
    judge.load_params(foreign)
  wrong = dict(params, conv_1=dict(params["conv_1"], kernel=np.zeros((3, 3, 16, 8), np.float32)))
  mismatched = str(tmp_path / "mismatched.npz")
  judge.save_params(mismatched, wrong)
  with pytest.raises(ValueError, match=r"mismatched.npz.*do not match JudgeNet.*conv_1/kernel"):
    judge.load_params(mismatched)
