"""Multi-host evaluation: 2 processes on 127.0.0.1 (2 CPU devices each) give the metrics of 1 process on
the same samples, each generating a disjoint half of the sample indices."""
import json
import os
import subprocess
import sys

import pytest

from arjax.eval import distributed
from conftest import free_port

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")


def _spawn(process_id, num_processes, port, out):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  return subprocess.Popen([sys.executable, WORKER, str(process_id), str(num_processes), str(port), str(out)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(procs, timeout=150):
  for p in procs:
    try:
      log, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("multi-host worker timed out")
    assert p.returncode == 0, log[-3000:]


def test_two_processes_match_one(tmp_path):
  port = free_port()
  outs = [tmp_path / f"p{i}.json" for i in range(3)]
  procs = [_spawn(0, 2, port, outs[0]), _spawn(1, 2, port, outs[1]), _spawn(0, 1, 0, outs[2])]
  _wait(procs)
  p0, p1, single = (json.loads(o.read_text()) for o in outs)
  assert p0["process_count"] == p1["process_count"] == 2 and p0["local_devices"] == 2
  assert single["process_count"] == 1
  # each process generated a disjoint half of the 60 indices (batches 0-3 and 4-7 of 8)
  assert p0["seen"] == list(range(32)) and p1["seen"] == list(range(32, 60))
  assert single["seen"] == list(range(60))
  for key, value in single["result"].items():
    for other in (p0, p1):
      assert other["result"][key] == pytest.approx(value, rel=1e-6, abs=1e-12), key
  assert single["result"]["fid"] > 0.01 and 0 < single["result"]["precision"] < 1


@pytest.mark.parametrize("num_batches,count", [(8, 2), (7, 2), (3, 4), (1, 3)])
def test_batch_ranges_partition_all_batches(num_batches, count):
  ranges = [distributed.batch_range(num_batches, p, count) for p in range(count)]
  flat = [b for r in ranges for b in r]
  assert flat == list(range(num_batches))
  assert max(len(r) for r in ranges) - min(len(r) for r in ranges) <= -(-num_batches // count)
