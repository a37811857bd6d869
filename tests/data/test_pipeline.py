"""grain pipelines: batch format, per-process shards, exact iterator resume, epochs, eval iteration, errors."""
import json

import numpy as np
import pytest
from PIL import Image

from arjax.config import base_config
from arjax.data import pipeline, shapes


def data_cfg(**kw):
  c = base_config().data
  c.update(dict(batch_size=8, num_examples=64, shuffle=False, repeat=False), **kw)
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


def ids(batches):
  """The shapes index of every example (identified by its image bytes) in a list of batches."""
  src = shapes.ShapesSource("train", 64)
  index = {pipeline.to_model_example(src[i])["image"].tobytes(): i for i in range(64)}
  return [index[x.tobytes()] for b in batches for x in b["image"]]


def test_batch_format_matches_source():
  batch = next(iter(pipeline.make_dataset(data_cfg(), process_index=0, process_count=1)))
  assert set(batch) == {"image", "label", "caption"}
  assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
  assert batch["caption"].shape == (8, 64) and batch["caption"].dtype == np.uint8
  assert -1 <= batch["image"].min() and batch["image"].max() <= 1
  src = shapes.ShapesSource("train", 64)
  for i in range(8):  # not shuffled: examples 0..7 in order
    ex = src[i]
    np.testing.assert_array_equal(batch["image"][i], ex["image"].astype(np.float32) / 127.5 - 1)
    assert batch["label"][i] == ex["label"]
    raw = ex["caption"].encode()
    assert bytes(batch["caption"][i][:len(raw)]) == raw and not batch["caption"][i][len(raw):].any()
    assert pipeline.decode_caption(batch["caption"][i]) == ex["caption"]


def test_process_shards_are_disjoint_and_complete():
  for shuffle in (False, True):
    cfg = data_cfg(shuffle=shuffle)
    shards = [ids(list(pipeline.make_dataset(cfg, seed=3, process_index=p, process_count=2))) for p in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 32
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(64))
    # process p holds rows [4p, 4p + 4) of each global batch of 8: together exactly the 1-process batches
    one = ids(list(pipeline.make_dataset(cfg, seed=3, process_index=0, process_count=1)))
    assert [i for k in range(0, 32, 4) for i in shards[0][k:k + 4] + shards[1][k:k + 4]] == one


def test_iterator_resumes_exactly():
  ds = pipeline.make_dataset(data_cfg(shuffle=True, repeat=True), seed=5, process_index=0, process_count=1)
  it = iter(ds)
  take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # JSON-serialisable, as saved in the checkpoint
  expected = take(it, 3)
  fresh = iter(pipeline.make_dataset(data_cfg(shuffle=True, repeat=True), seed=5, process_index=0,
                                     process_count=1))
  fresh.set_state(state)
  for a, b in zip(expected, take(fresh, 3)):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_shuffled_epochs_are_permutations_that_differ():
  cfg = data_cfg(shuffle=True, repeat=True)
  it = iter(pipeline.make_dataset(cfg, seed=0, process_index=0, process_count=1))
  epoch1, epoch2 = ids(take(it, 8)), ids(take(it, 8))
  assert sorted(epoch1) == sorted(epoch2) == list(range(64))
  assert epoch1 != epoch2 and epoch1 != list(range(64))
  other_seed = ids(take(iter(pipeline.make_dataset(cfg, seed=1, process_index=0, process_count=1)), 8))
  assert other_seed != epoch1


def test_iterate_eval_is_finite_and_ordered():
  cfg = data_cfg(batch_size=16)
  batches = list(pipeline.iterate_eval(cfg, "test", 40))
  assert [len(b["label"]) for b in batches] == [16, 16, 8]
  src = shapes.ShapesSource("test", 40)
  labels = np.concatenate([b["label"] for b in batches])
  np.testing.assert_array_equal(labels, [src[i]["label"] for i in range(40)])
  assert len(list(pipeline.iterate_eval(cfg, "test", 40))) == 3  # re-iterable, same length


def test_folder_data_name(tmp_path):
  for split, n in (("train", 6), ("test", 2)):
    for cls, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
      (tmp_path / split / cls).mkdir(parents=True)
      for i in range(n):
        Image.new("RGB", (40, 40), colour).save(tmp_path / split / cls / f"{i}.png")
  cfg = data_cfg(name=f"folder:{tmp_path}", batch_size=4)
  batch = next(iter(pipeline.make_dataset(cfg, split="test", process_index=0, process_count=1)))
  np.testing.assert_array_equal(batch["label"], [0, 0, 1, 1])
  assert [pipeline.decode_caption(c) for c in batch["caption"]] == ["a", "a", "b", "b"]
  np.testing.assert_allclose(batch["image"][0, 0, 0], [1, -1, -1])
  assert sum(len(b["label"]) for b in pipeline.make_dataset(cfg, process_index=0, process_count=1)) == 12


def test_bad_config_errors(tmp_path):
  with pytest.raises(ValueError, match=r"unknown data name 'mnist'.*shapes.*tfds:<name>.*folder:<path>"):
    pipeline.make_dataset(data_cfg(name="mnist"), process_index=0, process_count=1)
  with pytest.raises(ValueError, match="batch_size=100"):
    pipeline.make_dataset(data_cfg(batch_size=100), process_index=0, process_count=1)
  with pytest.raises(FileNotFoundError, match="nonexistent_dir_xyz"):
    pipeline.make_dataset(data_cfg(name="folder:/nonexistent_dir_xyz"), process_index=0, process_count=1)
  (tmp_path / "a").mkdir()
  Image.new("RGB", (8, 8)).save(tmp_path / "a" / "0.png")
  with pytest.raises(ValueError, match="num_examples=50 exceeds the 1 examples"):
    pipeline.iterate_eval(data_cfg(name=f"folder:{tmp_path}"), "test", 50)
  with pytest.raises(ValueError, match="process_index=2"):
    pipeline.make_dataset(data_cfg(), process_index=2, process_count=2)
