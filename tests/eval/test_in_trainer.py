"""Evaluators named in a config run inside the trainer and land in metrics.jsonl / TensorBoard."""
import json
import os

import ml_collections

from arjax import config as config_lib
from arjax.eval import judge
from arjax.main import run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
  run(cfg, str(tmp_path / "w"))
  with open(tmp_path / "w" / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  by_step = {}
  for r in rows:
    by_step.setdefault(r["step"], {}).update(r)
  for step in (2, 4):
    assert by_step[step]["fid/fid"] >= 0 and by_step[step]["fid/is"] >= 1 and 0 <= by_step[step]["judge/accuracy"] <= 1
  assert "bpd/bpd" in by_step[4] and "bpd/bpd" not in by_step[2] and by_step[4]["bpd/bpd"] > 0
  assert os.listdir(tmp_path / "w" / "tb")
