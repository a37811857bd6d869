"""Video judging: segment adherence and temporal consistency equal brute-force loops; the 'video_judge' evaluator
(named in a config like the image ones) scores a stream that follows a switch, one that ignores it, one that
flickers; bad input errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.eval import evaluators, video

NUM_CLASSES = 8


def test_adherence_and_consistency_equal_brute_force():
  rs = np.random.default_rng(0)
  labels = np.repeat(rs.integers(0, 3, (6, 1)), 9, 1)
  labels[:3, 4:] = (labels[:3, 4:] + 1) % 3  # rows 0-2 switch at frame 4
  pred = np.where(rs.random(labels.shape) < 0.7, labels, rs.integers(0, 3, labels.shape))
  acc = video.adherence(pred, labels)
  np.testing.assert_allclose(acc["per_frame"], [np.mean([pred[b, t] == labels[b, t] for b in range(6)])
                                                for t in range(9)])
  hits = {0: [], 1: []}
  pairs = []
  for b in range(6):
    seg = 0
    for t in range(9):
      if t and labels[b, t] != labels[b, t - 1]:
        seg += 1
      hits[seg].append(pred[b, t] == labels[b, t])
      if t and labels[b, t] == labels[b, t - 1]:
        pairs.append(pred[b, t] == pred[b, t - 1])
  np.testing.assert_allclose(acc["per_segment"], [np.mean(hits[0]), np.mean(hits[1])])
  assert video.consistency(pred, labels) == pytest.approx(np.mean(pairs))
  np.testing.assert_array_equal(video.segment_ids(labels)[0], [0] * 4 + [1] * 5)


class CodedJudge:
  """Reads the class a frame encodes in its first pixel (shape = class // 2, colour = class % 2)."""

  @staticmethod
  def predict(params, images):
    label = np.rint((np.asarray(images)[:, 0, 0, 0] + 1) * 10).astype(np.int32)
    return dict(label=label, shape=label // 2, colour=label % 2, position=np.zeros_like(label))


class CodedStream:
  """A stream whose frame t shows its current class (follow=False: it ignores switches; flicker: every other
  frame shows class + 2)."""

  def __init__(self, labels, follow, flicker):
    self.labels, self.follow, self.flicker, self.t = np.asarray(labels), follow, flicker, 0

  def next(self, n):
    out = []
    for _ in range(n):
      c = self.labels + (2 * (self.t % 2) if self.flicker else 0)
      out.append(np.broadcast_to((c / 10 - 1)[:, None, None, None], (len(c), 4, 4, 3)))
      self.t += 1
    return jnp.asarray(np.stack(out, 1))

  def switch(self, labels):
    if self.follow:
      self.labels = np.asarray(labels)


class CodedModel:
  num_classes = NUM_CLASSES

  def __init__(self, follow=True, flicker=False):
    self.follow, self.flicker = follow, flicker

  def stream(self, params, labels, rng, **opts):
    return CodedStream(labels, self.follow, self.flicker)


def run(model, **cfg):
  cfg = dict(dict(type="video_judge", num_samples=16, batch_size=8, frames=6, switch_at=3, after=2), **cfg)
  (ev,) = evaluators.build_evaluators(dict(v=cfg), model, "/tmp/unused")
  return ev.run({}, jax.random.PRNGKey(0))


def test_video_judge_evaluator(monkeypatch):
  monkeypatch.setattr(evaluators, "_judge_params", lambda weights, data_cfg: (CodedJudge, None))
  follows = run(CodedModel())
  assert follows == dict(accuracy_before=1.0, accuracy_after=1.0, accuracy_first_after=1.0, shape_consistency=1.0,
                         colour_consistency=1.0)
  ignores = run(CodedModel(follow=False))
  assert ignores["accuracy_before"] == 1.0 and ignores["accuracy_after"] == 0.0
  flickers = run(CodedModel(flicker=True), switch_at=0)
  # frames 0, 2, 4 show the class, 1, 3, 5 class + 2 (another shape, same colour): the judge reads 3 of 6
  assert flickers == dict(accuracy_before=0.5, shape_consistency=0.0, colour_consistency=1.0)
  with pytest.raises(ValueError, match="switch_at=6"):
    run(CodedModel(), switch_at=6)
  with pytest.raises(ValueError, match="needs a model with stream"):
    run(object())
  with pytest.raises(ValueError, match=r"expected \[B, T, H, W, 3\]"):
    video.judge_frames(CodedJudge, None, np.zeros((2, 4, 4, 3)))
  with pytest.raises(ValueError, match="same"):
    video.adherence(np.zeros((2, 3)), np.zeros((2, 4)))
