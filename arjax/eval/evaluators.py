"""Evaluators named in `config.evals`, run by the trainer every `.every` steps and by `arjax.evaluate`.

  config.evals.fid = dict(type='fid', every=1000, num_samples=5000, feature_net='shapes_judge')
  config.evals.judge = dict(type='judge', every=500, num_samples=512)

Types: 'judge' (class accuracy of class-conditional samples, or caption-attribute accuracy with
cond='caption'), 'fid' / 'is' / 'pr' (Fréchet distance, Inception Score, precision/recall on the features of
a FeatureNet; `metrics` may list several to share one set of samples), 'bpd' (bits per dimension of the
`split` images from the paradigm's `nll`), 'video_judge' (streamed videos: arjax.eval.video). Each has `.name`,
`.every` and `.run(params, rng, step) -> dict[str, float]`. Sample i is conditioned on label i % num_classes (or on caption i of `split`) and drawn in
batch i // batch_size from fold_in(rng, batch), by exactly one process (see arjax.eval.distributed); all
processes must call `run` and all get the same result.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable

import jax
import ml_collections
import numpy as np

from arjax import config as config_lib
from arjax import interfaces
from arjax.eval import distributed, metrics

COMMON = dict(type="", every=0, num_samples=1000, batch_size=64, split="test")
SAMPLING = dict(sample_opts={}, num_classes=0)
FEATURES = dict(feature_net="shapes_judge", weights="", reference="", metrics=(), k=3, splits=10)
DEFAULTS = {
    "judge": dict(COMMON, **SAMPLING, weights="", cond="label"),
    "fid": dict(COMMON, **SAMPLING, **FEATURES),
    "is": dict(COMMON, **SAMPLING, **FEATURES),
    "pr": dict(COMMON, **SAMPLING, **FEATURES),
    "bpd": dict(COMMON),
    "video_judge": dict(COMMON, **SAMPLING, weights="", frames=32, switch_at=16, after=4),
    "caption": dict(COMMON, sample_opts={}),  # image -> text caption accuracy (arjax.eval.interleaved)
}
DEFAULT_JUDGE_PATH = os.path.expanduser("~/.cache/arjax/shapes_judge.npz")


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """A feature network: fn(images [B,H,W,3] in [-1,1]) -> dict(pool [B,F], logits [B,C]) (numpy or jax)."""
  name: str
  fn: Callable


def _inception_net(weights: str, data_cfg) -> FeatureNet:
  from arjax.eval import inception
  if not weights:
    raise ValueError("feature_net='inception' needs weights=<path of pytorch-fid's pt_inception-2015-12-05-*.pth>")
  variables = distributed.to_local(inception.load(weights))
  return FeatureNet("inception", lambda images: inception.apply(variables, images))


def _judge_params(weights: str, data_cfg):
  from arjax.eval import judge
  kw = {} if data_cfg is None else dict(colours=tuple(data_cfg.colours), image_size=data_cfg.image_size)
  return judge, judge.load_or_train(weights or DEFAULT_JUDGE_PATH, **kw)


def _judge_net(weights: str, data_cfg) -> FeatureNet:
  """The shapes judge's pooled features; logits of its class head (for IS) from the same features."""
  judge, params = _judge_params(weights, data_cfg)
  head = jax.tree.map(np.asarray, params["head_label"])

  def fn(images):
    pool = judge.features(params, images)
    return dict(pool=pool, logits=pool @ head["kernel"] + head["bias"])

  return FeatureNet("shapes_judge", fn)


FEATURE_NETS = {"inception": _inception_net, "shapes_judge": _judge_net}


def load_feature_net(name: str, weights: str = "", data_cfg=None) -> FeatureNet:
  """The FeatureNet `name` ('inception' | 'shapes_judge') with its weights file."""
  if name not in FEATURE_NETS:
    raise ValueError(f"feature_net={name!r}: expected one of {sorted(FEATURE_NETS)}")
  return FEATURE_NETS[name](weights, data_cfg)


def _real_batch(source, indices) -> dict:
  """Examples `indices` of a random-access source as a model batch (image [-1,1], label, caption)."""
  from arjax.data import pipeline
  examples = [pipeline.to_model_example(source[int(i)]) for i in indices]
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _padded_indices(b: int, batch_size: int, num_examples: int):
  """Indices of batch b, the last batch padded by repeating the final example (keeps shapes static)."""
  return np.minimum(b * batch_size + np.arange(batch_size), num_examples - 1)


def dataset_features(net: FeatureNet, source, num_examples: int, batch_size: int) -> dict:
  """net features of the first num_examples examples of a random-access source, split over processes."""
  if num_examples > len(source):
    raise ValueError(f"num_examples={num_examples} exceeds the {len(source)} examples of {source!r}")
  fn = lambda b, _: net.fn(_real_batch(source, _padded_indices(b, batch_size, num_examples))["image"])
  return distributed.map_batches(fn, num_examples, batch_size)


class Evaluator:
  """Shared plumbing: config, the split's random-access source, class-conditional sampling."""

  def __init__(self, name: str, cfg: dict, model, data_cfg):
    self.name, self.cfg, self.model, self.data_cfg = name, cfg, model, data_cfg
    self.every, self.num_samples, self.batch_size = int(cfg["every"]), int(cfg["num_samples"]), int(cfg["batch_size"])
    self._source, self._last = None, None

  def source(self):
    """The eval split as a random-access source (needs data_cfg; opened once)."""
    if self.data_cfg is None:
      raise ValueError(f"config.evals.{self.name} needs the data config (build_evaluators(..., data_cfg=config.data))")
    if self._source is None:
      from arjax.data import pipeline
      source = pipeline.make_source(self.data_cfg, self.cfg["split"], self.num_samples)
      if len(source) < self.num_samples:
        raise ValueError(f"config.evals.{self.name}.num_samples={self.num_samples} exceeds the {len(source)} "
                         f"examples of split {self.cfg['split']!r}")
      self._source = source
    return self._source

  def real_batch(self, b: int) -> dict:
    """Batch b of the split (the last one padded by repeating its final example); the last one is kept."""
    if self._last is None or self._last[0] != b:
      self._last = (b, _real_batch(self.source(), _padded_indices(b, self.batch_size, self.num_samples)))
    return self._last[1]

  def conds(self, b: int):
    """Conditioning arrays for the full batch b: labels i % num_classes, or the split's captions."""
    if self.cfg.get("cond", "label") == "caption":
      return self.real_batch(b)["caption"]
    num_classes = self.cfg["num_classes"] or self.model.num_classes
    return ((b * self.batch_size + np.arange(self.batch_size)) % num_classes).astype(np.int32)

  def sample_map(self, params, rng, out_fn) -> dict:
    """out_fn(images, b) -> per-example arrays for num_samples samples, gathered from all processes."""
    mesh = distributed.local_mesh()
    params, rng = distributed.to_local((params, rng), mesh)
    opts = dict(self.cfg["sample_opts"])

    def fn(b, _):
      cond = {self.cfg.get("cond", "label"): distributed.shard_batch(self.conds(b), mesh)}
      images = self.model.sample(params, cond, jax.random.fold_in(rng, b), **opts)
      return out_fn(images, b)

    return distributed.map_batches(fn, self.num_samples, self.batch_size)


class JudgeEval(Evaluator):
  """Accuracy of the shapes judge on samples: class (cond='label') or caption attributes (cond='caption')."""

  ATTRIBUTES = ("shape", "colour", "position")

  def __init__(self, *args):
    super().__init__(*args)
    if self.cfg["cond"] not in ("label", "caption"):
      raise ValueError(f"config.evals.{self.name}.cond={self.cfg['cond']!r}: expected 'label' or 'caption'")
    if self.cfg["cond"] == "caption":
      self.source()
    self.judge, self.judge_params = _judge_params(self.cfg["weights"], self.data_cfg)

  def run(self, params, rng, step=None):
    predict = lambda images: self.judge.predict(self.judge_params, np.asarray(images))
    if self.cfg["cond"] == "label":
      out = self.sample_map(params, rng, lambda images, b: dict(pred=predict(images)["label"], want=self.conds(b)))
      return dict(accuracy=float(np.mean(out["pred"] == out["want"])))
    # captions: the judge's reading of the real image a caption came from is the target
    out = self.sample_map(params, rng, lambda images, b: dict(
        **{f"pred_{k}": v for k, v in predict(images).items()},
        **{f"want_{k}": v for k, v in predict(self.real_batch(b)["image"]).items()}))
    hits = {k: out[f"pred_{k}"] == out[f"want_{k}"] for k in self.ATTRIBUTES}
    return dict(**{f"{k}_accuracy": float(np.mean(v)) for k, v in hits.items()},
                all_accuracy=float(np.mean(np.all(list(hits.values()), axis=0))))


class FeatureEval(Evaluator):
  """FID / IS / precision-recall of samples in a FeatureNet's space."""

  def __init__(self, *args):
    super().__init__(*args)
    self.metrics = tuple(self.cfg["metrics"]) or (self.cfg["type"],)
    unknown = set(self.metrics) - {"fid", "is", "pr"}
    if unknown:
      raise ValueError(f"config.evals.{self.name}.metrics has {sorted(unknown)}; expected a subset of fid, is, pr")
    ref = self.cfg["reference"]
    if ref and (not ref.endswith(".npz") or "pr" in self.metrics):
      raise ValueError(f"config.evals.{self.name}.reference={ref!r}: expected '' (real images of split "
                       f"{self.cfg['split']!r}) or a stats .npz (fid only; pr needs real features)")
    if "pr" in self.metrics or ("fid" in self.metrics and not ref):
      self.source()
    self.net = load_feature_net(self.cfg["feature_net"], self.cfg["weights"], self.data_cfg)
    self._real = None

  def real_features(self) -> dict:
    """Features of the first num_samples split images (computed once, sharded like the samples)."""
    if self._real is None:
      self._real = dataset_features(self.net, self.source(), self.num_samples, self.batch_size)
    return self._real

  def reference_stats(self):
    if self.cfg["reference"]:
      return metrics.load_stats(self.cfg["reference"])
    return metrics.feature_stats(self.real_features()["pool"])

  def run(self, params, rng, step=None):
    fake = self.sample_map(params, rng, lambda images, b: self.net.fn(images))
    out = {}
    if "fid" in self.metrics:
      out["fid"] = metrics.frechet_distance(*metrics.feature_stats(fake["pool"]), *self.reference_stats())
    if "is" in self.metrics:
      out["is"], out["is_std"] = metrics.inception_score(fake["logits"], self.cfg["splits"])
    if "pr" in self.metrics:
      out["precision"], out["recall"] = metrics.precision_recall(self.real_features()["pool"], fake["pool"],
                                                                 self.cfg["k"])
    return out


class BpdEval(Evaluator):
  """Bits per dimension of the split's images: model.nll(params, batch) nats summed over H*W*3 dims."""

  def __init__(self, *args):
    super().__init__(*args)
    nll = interfaces.optional(self.model, "nll")
    if nll is None:
      raise ValueError(f"config.evals.{self.name} (type 'bpd') needs a likelihood: {type(self.model).__name__} "
                       "has no nll(params, batch) -> per-example summed NLL in nats")
    self.source()
    self._nll = jax.jit(lambda params, batch: nll(params, self.model.preprocess(batch)))

  def run(self, params, rng=None, step=None):
    mesh = distributed.local_mesh()
    params = distributed.to_local(params, mesh)

    def fn(b, _):
      batch = self.real_batch(b)
      dims = np.full(self.batch_size, math.prod(batch["image"].shape[1:]))
      return dict(nll=self._nll(params, distributed.shard_batch(batch, mesh)), dims=dims)

    out = distributed.map_batches(fn, self.num_samples, self.batch_size)
    return dict(bpd=metrics.bits_per_dim(np.sum(out["nll"], dtype=np.float64), int(out["dims"].sum())))


def _video_judge(*args):
  """'video_judge' (arjax.eval.video, imported here: it builds on Evaluator)."""
  from arjax.eval import video
  return video.VideoJudgeEval(*args)


def _caption_eval(*args):
  from arjax.eval.interleaved import CaptionEval  # imports this module: resolved on use
  return CaptionEval(*args)


TYPES = {"judge": JudgeEval, "fid": FeatureEval, "is": FeatureEval, "pr": FeatureEval, "bpd": BpdEval,
         "video_judge": _video_judge, "caption": _caption_eval}


def build_evaluators(evals_cfg, model, workdir: str, data_cfg=None, sample_cfg=None) -> list:
  """One evaluator per entry of config.evals (name -> dict(type=..., every=..., num_samples=..., ...)).

  data_cfg (config.data) gives the real images of `split` (FID / PR reference, captions, bpd) and the judge's
  colours; sample_cfg (config.sample) is the sampling evaluators' sample_opts unless an entry sets its own;
  workdir is part of the trainer's protocol (results are logged by the caller).
  """
  del workdir
  out = []
  for name, entry in (evals_cfg or {}).items():
    entry = entry.to_dict() if isinstance(entry, ml_collections.ConfigDict) else dict(entry)
    kind = entry.get("type")
    if kind not in TYPES:
      raise ValueError(f"config.evals.{name}.type={kind!r}: expected one of {sorted(TYPES)}")
    config_lib.check_keys(entry, DEFAULTS[kind], f"evals.{name}")
    if "sample_opts" in DEFAULTS[kind] and "sample_opts" not in entry and sample_cfg is not None:
      entry["sample_opts"] = dict(sample_cfg)
    out.append(TYPES[kind](name, dict(DEFAULTS[kind], **entry), model, data_cfg))
  return out
