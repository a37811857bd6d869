"""Configs: every shipped config loads; misspelt keys and presets fail with a message naming them."""
import glob
import os
import subprocess
import sys

import ml_collections
import pytest
from conftest import ROOT

from arjax import config as config_lib
from arjax import registry

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


def test_parse_arg_presets_and_typed_values():
  arg = config_lib.parse_arg("smoke,steps=10,lr=0.5", smoke=False, d16=False, steps=0, lr=1.0, data="shapes")
  assert (arg.smoke, arg.d16, arg.steps, arg.lr, arg.data) == (True, False, 10, 0.5, "shapes")
  assert config_lib.parse_arg(None, smoke=False).smoke is False
  assert config_lib.parse_arg("smoke=false", smoke=True).smoke is False
  with pytest.raises(ValueError, match=r"unknown preset 'smok'.*allowed: d16, smoke"):
    config_lib.parse_arg("smok", smoke=False, d16=False)
  with pytest.raises(ValueError, match="steps=<int>"):
    config_lib.parse_arg("steps", steps=0)
  with pytest.raises(ValueError, match="steps='x' must be of type int"):
    config_lib.parse_arg("steps=x", steps=0)
  with pytest.raises(ValueError, match="no presets"):
    config_lib.load_config(os.path.join(ROOT, "configs/imagenet256/var_d16.py:smoke"))


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
