"""Judging streamed videos of `moving_shapes` classes: per-frame prompt adherence per segment, temporal consistency.

The shapes judge (arjax.eval.judge) reads every frame; a segment is a maximal run of frames with one prompt.
  * adherence: the fraction of frames whose judged class is the prompt, per frame index and per segment;
  * consistency: within a segment, the fraction of adjacent frame pairs whose judged shape (identity) and judged
    colour agree (a stream that keeps its object scores 1, one that flickers or drifts scores less).
The evaluator type 'video_judge' (registered in arjax.eval.evaluators) streams `frames` frames per prompt with
model.stream, switching to another class at frame `switch_at` (0: no switch), and reports
accuracy_before / accuracy_after (adherence of the two segments), accuracy_first_after (the `after` frames right
after the switch), shape_consistency and colour_consistency.
"""
from __future__ import annotations

import jax
import numpy as np

from arjax.eval import distributed, evaluators


def judge_frames(judge, judge_params, video_BTHW3) -> dict:
  """The judge's predictions (label, shape, colour, position), each int32 [B, T], for every frame."""
  video = np.asarray(video_BTHW3)
  if video.ndim != 5 or video.shape[-1] != 3:
    raise ValueError(f"video of shape {video.shape}: expected [B, T, H, W, 3]")
  b, t = video.shape[:2]
  return {k: v.reshape(b, t) for k, v in judge.predict(judge_params, video.reshape(b * t, *video.shape[2:])).items()}


def segment_ids(labels_BT) -> np.ndarray:
  """int32 [B, T]: the index of each frame's segment (a new one wherever the prompt changes)."""
  labels = np.asarray(labels_BT)
  if labels.ndim != 2:
    raise ValueError(f"labels of shape {labels.shape}: expected [B, T]")
  return np.concatenate([np.zeros((len(labels), 1), np.int32), np.cumsum(labels[:, 1:] != labels[:, :-1], 1)], 1)


def adherence(pred_BT, labels_BT) -> dict:
  """per_frame [T] (accuracy at each frame index) and per_segment (accuracy of segment s, s = 0, 1, ...; over the
  rows that have it)."""
  pred, labels = np.asarray(pred_BT), np.asarray(labels_BT)
  if pred.shape != labels.shape:
    raise ValueError(f"predictions {pred.shape} and labels {labels.shape} must have the same [B, T] shape")
  hit, seg = pred == labels, segment_ids(labels)
  return dict(per_frame=hit.mean(0), per_segment=np.array([hit[seg == s].mean() for s in range(seg.max() + 1)]))


def consistency(pred_BT, labels_BT) -> float:
  """The fraction of adjacent frame pairs inside one segment whose predictions agree (nan if there are none)."""
  pred, seg = np.asarray(pred_BT), segment_ids(labels_BT)
  same_segment = seg[:, 1:] == seg[:, :-1]
  if not same_segment.any():
    return float("nan")
  return float((pred[:, 1:] == pred[:, :-1])[same_segment].mean())


def stream_video(model, params, labels_B, new_B, rng, frames: int, switch_at: int, opts) -> np.ndarray:
  """[B, frames, H, W, 3]: a stream of labels_B that switches (KV re-cache) to new_B at frame switch_at (0: never)."""
  s = model.stream(params, labels_B, rng, **opts)
  if not switch_at:
    return np.asarray(s.next(frames))
  first = s.next(switch_at)
  s.switch(new_B)
  return np.concatenate([np.asarray(first), np.asarray(s.next(frames - switch_at))], 1)


class VideoJudgeEval(evaluators.Evaluator):
  """Adherence and consistency of streamed videos (labels i % num_classes, switching to (i + 1 + i // C) % C)."""

  def __init__(self, *args):
    super().__init__(*args)
    if not hasattr(self.model, "stream"):
      raise ValueError(f"config.evals.{self.name} (type 'video_judge') needs a model with stream(); "
                       f"{type(self.model).__name__} has none")
    frames, switch_at = int(self.cfg["frames"]), int(self.cfg["switch_at"])
    if frames < 2 or not 0 <= switch_at < frames:
      raise ValueError(f"config.evals.{self.name}: frames={frames}, switch_at={switch_at}; expected frames >= 2 and "
                       "0 <= switch_at < frames")
    self.judge, self.judge_params = evaluators._judge_params(self.cfg["weights"], self.data_cfg)

  def prompts(self, b: int):
    """(labels [batch], new labels [batch]) of batch b."""
    c = self.cfg["num_classes"] or self.model.num_classes
    i = b * self.batch_size + np.arange(self.batch_size)
    return (i % c).astype(np.int32), ((i % c + 1 + (i // c) % (c - 1)) % c).astype(np.int32)

  def run(self, params, rng, step=None):
    frames, switch_at, after = int(self.cfg["frames"]), int(self.cfg["switch_at"]), int(self.cfg["after"])
    params = distributed.to_local(params)

    def fn(b, _):
      labels, new = self.prompts(b)
      video = stream_video(self.model, params, labels, new, jax.random.fold_in(rng, b), frames, switch_at,
                           dict(self.cfg["sample_opts"]))
      want = np.repeat(labels[:, None], frames, 1)
      if switch_at:
        want[:, switch_at:] = new[:, None]
      return dict(want=want, **judge_frames(self.judge, self.judge_params, video))

    out = distributed.map_batches(fn, self.num_samples, self.batch_size)
    acc = adherence(out["label"], out["want"])
    result = dict(accuracy_before=float(acc["per_segment"][0]),
                  shape_consistency=consistency(out["shape"], out["want"]),
                  colour_consistency=consistency(out["colour"], out["want"]))
    if switch_at:
      result.update(accuracy_after=float(acc["per_segment"][1]),
                    accuracy_first_after=float(acc["per_frame"][switch_at:switch_at + after].mean()))
    return result
