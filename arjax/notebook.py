"""Helpers the notebooks share: the setup cell (platform, SMOKE switch, workdir), inline images, checkout files.

Every notebook's first cell installs arjax from the checkout when it is not importable, then calls `setup`.
Configs and scripts are read from the checkout this package lives in (`root()`).
"""
from __future__ import annotations

import importlib.util
import os
import pathlib


def root() -> pathlib.Path:
  """The checkout holding this package (configs/, scripts/, notebooks/)."""
  return pathlib.Path(__file__).resolve().parent.parent


def setup(name: str):
  """Prints the platform, reads SMOKE=1 (tiny sizes); returns (smoke, workdir) with workdir =
  $ARJAX_NOTEBOOK_DIR/name (default <checkout>/runs/notebooks/name; rerunning resumes what is there)."""
  import jax
  smoke = os.environ.get("SMOKE", "0") == "1"
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/arjax_jax"))
  devices = jax.devices()
  print(f"jax {jax.__version__}: {len(devices)} x {devices[0].device_kind} ({jax.default_backend().upper()})"
        f"{'  SMOKE=1: tiny sizes' if smoke else ''}")
  if jax.default_backend() == "cpu" and (os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME")
                                         or os.path.exists("/dev/accel0") or os.path.exists("/dev/nvidia0")):
    print("an accelerator is attached but jax sees only the CPU: install the matching jax build, e.g. "
          "pip install 'jax[tpu]==0.10.2' or 'jax[cuda12]==0.10.2', then restart the runtime")
  workdir = os.path.join(os.environ.get("ARJAX_NOTEBOOK_DIR") or str(root() / "runs" / "notebooks"), name)
  os.makedirs(workdir, exist_ok=True)
  return smoke, workdir


def config(spec: str):
  """'shapes/vq.py[:arg]' (relative to the checkout's configs/) -> the ConfigDict."""
  from arjax.config import load_config
  return load_config(str(root() / "configs" / spec))


def script(name: str):
  """Imports scripts/<name>.py from the checkout as a module (its main() is not run)."""
  spec = importlib.util.spec_from_file_location(name, root() / "scripts" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def show(path: str, width: int | None = None):
  """Displays a PNG / GIF inline when running under IPython, else prints its path."""
  try:
    from IPython import get_ipython
    from IPython.display import Image, display
  except ImportError:
    get_ipython = None
  if get_ipython is None or get_ipython() is None:
    print(path)
    return
  display(Image(filename=str(path), width=width))
