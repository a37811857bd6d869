"""`python -m arjax.main` user errors: one `error: ...` line on stderr, exit status 2, no traceback."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

SMOKE = os.path.join(ROOT, "configs/shapes/next_token.py:smoke")


@pytest.mark.parametrize("case", ["misspelt_key", "missing_config", "workdir_is_file", "unknown_preset",
                                  "incomplete_multihost"])
def test_main_user_errors(tmp_path, case):
  (tmp_path / "file").write_text("")
  args, pattern = {
      "misspelt_key": ([f"--config={SMOKE}", "--config.model.widht=3"], r"widht"),
      "missing_config": ([f"--config={tmp_path}/nope.py"], r"nope\.py"),
      "workdir_is_file": ([f"--config={SMOKE}", f"--workdir={tmp_path}/file/run"], r"file.*not a directory"),
      "unknown_preset": ([f"--config={SMOKE[:-len('smoke')]}smok"], r"unknown preset 'smok'"),
      "incomplete_multihost": ([f"--config={SMOKE}", "--num_processes=2"], r"--coordinator"),
  }[case]
  if not any(a.startswith("--workdir") for a in args):
    args.append(f"--workdir={tmp_path}/run")
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  proc = subprocess.run([sys.executable, "-m", "arjax.main", *args], capture_output=True, text=True, cwd=ROOT,
                        timeout=120, env=dict(env, JAX_PLATFORMS="cpu"))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
  assert re.search(pattern, lines[0]), lines[0]
