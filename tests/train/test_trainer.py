"""The trainer: mesh sharding gives the same numbers, checkpoints resume exactly, SIGTERM saves,
corrupt checkpoints fail loudly without deleting anything. Each run is a fresh process."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from arjax.train import checkpoint as ckpt_lib

RUNNER = os.path.join(os.path.dirname(__file__), "run_smoke.py")


def run_smoke(workdir, out="", check=True, **kw):
  cmd = [sys.executable, RUNNER, "--workdir", str(workdir)] + (["--out", str(out)] if out else [])
  for k, v in kw.items():
    cmd += [f"--{k}", str(v)]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  if check:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def load(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def test_sharded_mesh_matches_single_device(tmp_path):
  run_smoke(tmp_path / "one", tmp_path / "one.npz", devices=1, mesh="1,1,1", steps=3)
  run_smoke(tmp_path / "mesh", tmp_path / "mesh.npz", devices=8, mesh="4,2,1", steps=3)
  one, mesh = load(tmp_path / "one.npz"), load(tmp_path / "mesh.npz")
  assert abs(float(one["loss"]) - float(mesh["loss"])) <= 1e-5
  assert mesh["max_distinct_shards"] > 1 and one["max_distinct_shards"] == 1  # really sharded
  for k in one:
    if k.startswith("['params']"):
      np.testing.assert_allclose(one[k], mesh[k], atol=2e-5, err_msg=k)


def test_resume_equals_straight_run(tmp_path):
  run_smoke(tmp_path / "straight", tmp_path / "straight.npz", steps=4)
  run_smoke(tmp_path / "resumed", steps=4, stop_at=2)
  proc = run_smoke(tmp_path / "resumed", tmp_path / "resumed.npz", steps=4)
  assert "resumed from" in proc.stdout and "at step 2" in proc.stdout
  a, b = load(tmp_path / "straight.npz"), load(tmp_path / "resumed.npz")
  assert int(b["step"]) == 4
  assert abs(float(a["loss"]) - float(b["loss"])) <= 1e-6
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)


def test_sigterm_saves_and_restart_resumes(tmp_path):
  workdir = tmp_path / "w"
  cmd = [sys.executable, RUNNER, "--workdir", str(workdir), "--steps", "100000"]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  assert "SIGTERM: saved step" in out
  saved = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), create=False).latest_step()
  assert saved is not None and saved >= 2
  proc2 = run_smoke(workdir, steps=saved + 1)
  assert f"at step {saved}" in proc2.stdout


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(ckpt_lib.CheckpointError, match="does not exist"):
    ckpt_lib.load_params(str(tmp_path / "nowhere"))
  workdir = tmp_path / "w"
  run_smoke(workdir, steps=2)
  step_dir = workdir / "checkpoints" / "2" / "state"
  victims = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
  assert victims
  for p in victims:
    p.write_bytes(b"garbage")
  before = sorted(str(p) for p in (workdir / "checkpoints").rglob("*"))
  proc = run_smoke(workdir, steps=3, check=False)
  assert proc.returncode != 0
  assert "CheckpointError" in proc.stderr and str(workdir / "checkpoints") in proc.stderr
  assert "nothing was deleted" in proc.stderr
  assert sorted(str(p) for p in (workdir / "checkpoints").rglob("*")) == before
