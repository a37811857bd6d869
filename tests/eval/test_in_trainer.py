"""Evaluators named in a config run inside the trainer and land in metrics.jsonl / TensorBoard; the logged FID,
IS and judge accuracy equal an independent numpy/scipy computation on the final EMA params' samples."""
import json
import os

import ml_collections
import numpy as np
import scipy.special
from conftest import ROOT

from arjax import config as config_lib
from arjax import eval as eval_lib
from arjax import registry
from arjax.eval import judge
from arjax.main import run


def reference_metrics(cfg, params, rng, workdir):
  """FID / IS / judge accuracy of the evaluators' samples (same conds and rng) with numpy/scipy only."""
  fid_ev = {ev.name: ev for ev in eval_lib.build_evaluators(cfg.evals, registry.build_model(cfg), workdir,
                                                            data_cfg=cfg.data, sample_cfg=cfg.sample)}["fid"]
  fake = fid_ev.sample_map(params, rng, lambda images, b: dict(images=np.asarray(images), want=fid_ev.conds(b)))
  feats, real = fid_ev.net.fn(fake["images"]), fid_ev.real_features()
  stats = [(np.mean(f, 0), np.cov(f, rowvar=False)) for f in (np.asarray(feats["pool"], np.float64),
                                                                np.asarray(real["pool"], np.float64))]
  (mu1, s1), (mu2, s2) = stats
  s1, s2 = s1 + 1e-6 * np.eye(len(mu1)), s2 + 1e-6 * np.eye(len(mu1))  # singular (8 samples): as the evaluator
  tr_covmean = np.sum(np.sqrt(np.maximum(np.linalg.eigvals(s1 @ s2).real, 0)))
  fid = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
  p_yx = scipy.special.softmax(np.asarray(feats["logits"], np.float64), axis=1)
  is_folds = [np.exp(np.mean(np.sum(scipy.special.rel_entr(p, p.mean(0, keepdims=True)), 1)))
              for p in np.array_split(p_yx, cfg.evals.fid.splits)]
  pred = judge.predict(judge.load_params(cfg.evals.judge.weights), fake["images"])["label"]
  return {"fid/fid": fid, "fid/is": np.mean(is_folds), "judge/accuracy": np.mean(pred == fake["want"])}


def test_smoke_config_runs_fid_judge_and_bpd_evaluators(tmp_path):
  weights = str(tmp_path / "judge.npz")
  judge.save_params(weights, judge.train_judge(steps=2, batch_size=8, progress=False))
  cfg = config_lib.load_config(os.path.join(ROOT, "configs/shapes/next_token.py:smoke"))
  cfg.train.update(progress=False, num_sample_images=2)
  common = dict(every=2, num_samples=8, batch_size=4, split="test", weights=weights)
  cfg.evals = ml_collections.ConfigDict(dict(
      fid=dict(type="fid", feature_net="shapes_judge", metrics=("fid", "is"), splits=2, **common),
      judge=dict(type="judge", **common),
      bpd=dict(type="bpd", every=4, num_samples=8, batch_size=4, split="test")))
  state, _ = run(cfg, str(tmp_path / "w"))
  with open(tmp_path / "w" / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  by_step = {}
  for r in rows:
    by_step.setdefault(r["step"], {}).update(r)
  assert {"fid/fid", "fid/is", "judge/accuracy"} <= set(by_step[2])
  want = reference_metrics(cfg, state.ema_params, state.rng, str(tmp_path / "w"))  # step 4 is the last step
  for k, v in want.items():
    np.testing.assert_allclose(by_step[4][k], v, rtol=1e-4, atol=1e-6, err_msg=k)
  assert "bpd/bpd" in by_step[4] and "bpd/bpd" not in by_step[2] and by_step[4]["bpd/bpd"] > 0
  assert os.listdir(tmp_path / "w" / "tb")
