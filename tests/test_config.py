"""Configs: every shipped config loads; misspelt keys and presets fail with a message naming them."""
import glob
import os
import subprocess
import sys

import ml_collections
import pytest

from arjax import config as config_lib
from arjax import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.py")))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_loads_with_launch_command_in_docstring(path):
  cfg = config_lib.load_config(path)
  assert isinstance(cfg, ml_collections.ConfigDict) and cfg.model.name in registry.MODELS
  with open(path) as f:
    assert "python -m arjax.main --config " + os.path.relpath(path, ROOT) in f.read()


def test_unknown_preset_and_missing_file():
  with pytest.raises(ValueError, match="unknown preset 'd99'"):
    config_lib.load_config(os.path.join(ROOT, "configs/shapes/next_token.py") + ":d99")
  with pytest.raises(FileNotFoundError, match="nope.py"):
    config_lib.load_config("configs/nope.py")


def test_locked_sections_reject_typos():
  cfg = config_lib.load_config(os.path.join(ROOT, "configs/shapes/next_token.py:smoke"))
  with pytest.raises(AttributeError, match="lrr"):
    cfg.optim.lrr = 1.0


def test_model_keys_checked():
  cfg = config_lib.load_config(os.path.join(ROOT, "configs/shapes/next_token.py:smoke"))
  cfg.model.transformer.depht = 3
  with pytest.raises(ValueError, match="depht"):
    registry.build_model(cfg)


@pytest.mark.parametrize("override,needle", [("--config.optim.lrr=0.1", "lrr"),
                                             ("--config.train.steps=abc", "steps")])
def test_bad_command_line_override(tmp_path, override, needle):
  proc = subprocess.run([sys.executable, "-m", "arjax.main", "--config",
                         os.path.join(ROOT, "configs/shapes/next_token.py:smoke"), "--workdir", str(tmp_path),
                         override], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode != 0 and needle in proc.stderr
  assert not os.listdir(tmp_path)  # failed before touching the workdir
