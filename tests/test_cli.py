"""CLIs (arjax.sample, arjax.convert, arjax.evaluate): a user error is one `error: ...` line on stderr and exit
status 2, never a traceback; arjax.convert refuses to write over an earlier conversion unless --overwrite."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

SMOKE = os.path.join(ROOT, "configs/shapes/next_token.py:smoke")


def run(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                        timeout=300, env=env)


def assert_user_error(proc, pattern):
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
  assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture(scope="module")
def misspelt_config(tmp_path_factory):
  path = tmp_path_factory.mktemp("cfg") / "misspelt.py"
  path.write_text(f"from arjax.config import load_config\n\n\ndef get_config(arg=None):\n"
                  f"  c = load_config({SMOKE!r})\n  c.model.widht = 32\n  return c\n")
  return str(path)


@pytest.mark.parametrize("case", ["missing_config", "misspelt_key", "missing_checkpoint", "bad_class", "bad_flag"])
def test_sample_user_errors(tmp_path, misspelt_config, case):
  args = dict(config=SMOKE, checkpoint=tmp_path / "nope", classes="1,2")
  pattern = {"missing_config": r"nope\.py.*not found", "misspelt_key": r"widht", "missing_checkpoint": r"nope",
             "bad_class": r"\['9', 'x'\].*\[0, 8\)", "bad_flag": r"--classes"}[case]
  if case == "missing_config":
    args["config"] = tmp_path / "nope.py"
  elif case == "misspelt_key":
    args["config"] = misspelt_config
  elif case == "bad_class":
    args["classes"] = "1,9,x"
  elif case == "bad_flag":
    del args["classes"]
  assert_user_error(run("arjax.sample", *[x for k, v in args.items() for x in (f"--{k}", v)]), pattern)


@pytest.mark.parametrize("case", ["missing_config", "misspelt_key", "missing_checkpoint", "unknown_preset"])
def test_evaluate_user_errors(tmp_path, case):
  args = {"missing_config": [f"--config={tmp_path}/nope.py"],
          "misspelt_key": [f"--config={SMOKE}", "--config.train.stepz=3"],
          "missing_checkpoint": [f"--config={SMOKE}"],
          "unknown_preset": [f"--config={SMOKE[:-len('smoke')]}smok"]}[case]
  pattern = {"missing_config": r"nope\.py", "misspelt_key": r"stepz.*steps", "missing_checkpoint": r"nope.*not exist",
             "unknown_preset": r"unknown preset 'smok'"}[case]
  assert_user_error(run("arjax.evaluate", *args, f"--checkpoint={tmp_path}/nope"), pattern)


def test_convert_bad_file_and_existing_output(tmp_path):
  bad = tmp_path / "garbage.pth"
  bad.write_bytes(b"not a checkpoint")
  assert_user_error(run("arjax.convert", "--from", "var", "--ckpt", bad, "--out", tmp_path / "out"),
                    r"garbage\.pth.*not a readable checkpoint")
  assert_user_error(run("arjax.convert", "--from", "var", "--ckpt", tmp_path / "nope.pth", "--out", tmp_path / "out"),
                    r"nope\.pth.*not found")
  (tmp_path / "out" / "checkpoints").mkdir(parents=True)
  assert_user_error(run("arjax.convert", "--from", "var", "--ckpt", bad, "--out", tmp_path / "out"),
                    r"already holds \['checkpoints'\].*--overwrite")
