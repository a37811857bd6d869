"""Multi-host training: `python -m arjax.main` as 2 processes on 127.0.0.1 (1 CPU device each, mesh data=2) trains
exactly as 1 process with 2 devices on the same global batch, across a multi-process checkpoint save and resume."""
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from arjax.train import checkpoint as ckpt_lib
from conftest import ROOT, free_port

SMOKE = os.path.join(ROOT, "configs/shapes/next_token.py:smoke")
STEPS = 3
TIMEOUT_S = 240


def launch(workdir, devices, *args, env=None):
  """Starts `python -m arjax.main` on the smoke config (3 steps, mesh data=2) with `devices` fake CPU devices;
  returns (process, its log file)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             **(env or {}))
  env.pop("JAX_NUM_CPU_DEVICES", None)
  cmd = [sys.executable, "-m", "arjax.main", f"--config={SMOKE}", f"--workdir={workdir}", "--config.mesh.shape=(2,1,1)",
         f"--config.train.steps={STEPS}", "--config.train.log_every=1", "--config.train.progress=False", *args]
  log = open(f"{workdir}-{time.time_ns()}.log", "w+")
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True), log


def wait(launched):
  """Waits for every process; on a failure or the timeout kills them all and fails with the log. Returns the logs."""
  deadline = time.time() + TIMEOUT_S
  try:
    while any(p.poll() is None for p, _ in launched) and time.time() < deadline:
      if any(p.poll() not in (None, 0) for p, _ in launched):
        break  # the others would wait for it forever
      time.sleep(0.2)
    logs = []
    for p, log in launched:
      log.seek(0)
      logs.append(log.read())
      if p.poll() != 0:
        pytest.fail(f"rc={p.poll()} (None: still running after {TIMEOUT_S} s)\n{logs[-1][-3000:]}")
    return logs
  finally:
    for p, log in launched:
      if p.poll() is None:
        p.kill()
        p.wait()
      log.close()


def two_processes(workdir, *args):
  """Process 0 is configured by flags, process 1 by the JAX_* environment variables."""
  port = free_port()
  return [launch(workdir, 1, f"--coordinator=127.0.0.1:{port}", "--num_processes=2", "--process_id=0", *args),
          launch(workdir, 1, *args, env=dict(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                             JAX_PROCESS_ID="1"))]


def metrics(workdir):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  return np.array([[r[k] for k in sorted(r) if k not in ("step", "steps_per_s")] for r in rows])


def test_two_processes_train_as_one(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  wait([launch(one, 2)] + two_processes(two, "--config.train.stop_at_step=2"))
  assert (two / "checkpoints" / "2").is_dir()
  log0, _ = wait(two_processes(two))  # resumes from the step-2 checkpoint both processes saved
  assert "at step 2" in log0 and (two / "samples.png").is_file()
  run = json.loads((two / "run.json").read_text())  # where it trained: the global device count, written once
  assert run == dict(device="cpu", num_devices=2, jax=jax.__version__)
  loss_diff = np.abs(metrics(one) - metrics(two)).max()  # loss, nll, grad_norm, token_acc, lr per step
  state_one, data_one = ckpt_lib.Checkpointer(str(one / "checkpoints"), create=False).restore()
  state_two, data_two = ckpt_lib.Checkpointer(str(two / "checkpoints"), create=False).restore()
  assert data_one == data_two and int(state_one["step"]) == int(state_two["step"]) == STEPS
  diffs = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max()),
                       state_one["params"], state_two["params"])
  param_diff = max(jax.tree.leaves(diffs))
  print(f"2 processes vs 1: max |metric diff| {loss_diff:.3g}, max |param diff| {param_diff:.3g}")
  assert loss_diff <= 1e-5 and param_diff <= 1e-5, (loss_diff, param_diff)
  state_two_2, _ = ckpt_lib.Checkpointer(str(two / "checkpoints"), create=False).restore(step=2, with_data=False)
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), state_two["params"],
                       state_two_2["params"])
  assert max(jax.tree.leaves(moved)) > 1e-4  # the resumed step really trained
