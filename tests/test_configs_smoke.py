"""Every config with a `smoke` preset trains 2 steps (finite loss) and then samples 2 images the way the trainer
does (train.loop.write_samples), in [-1, 1] at the data's size; a tokenizer (no sample) reconstructs 2 images.
Paradigm configs get an untrained tokenizer (tokenizer.workdir is unset)."""
import glob
import os

import jax
import numpy as np
import pytest
from conftest import ROOT

from arjax import config as config_lib
from arjax import registry
from arjax.train import loop


def smoke_configs():
  """configs/**/*.py that accept the `smoke` preset."""
  out = []
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)):
    try:
      config_lib.load_config(path + ":smoke")
    except ValueError:
      continue
    out.append(path)
  return out


@pytest.mark.parametrize("path", smoke_configs(), ids=lambda p: os.path.relpath(p, os.path.join(ROOT, "configs")))
def test_smoke_config_trains_and_samples(tmp_path, path):
  cfg = config_lib.load_config(path + ":smoke")
  cfg.train.update(steps=2, progress=False, num_sample_images=2)
  model = registry.build_model(cfg)
  state, metrics = loop.train(cfg, str(tmp_path), model)
  assert int(state.step) == 2 and np.isfinite(metrics["loss"]), metrics
  size = cfg.data.image_size
  if hasattr(model, "sample"):
    images = loop.write_samples(model, state.ema_params, cfg, str(tmp_path / "samples.png"))
    assert (tmp_path / "samples.png").exists()
  else:
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, size, size, 3), minval=-1, maxval=1)
    images = model.decode(state.ema_params, model.encode(state.ema_params, x))
  images = np.asarray(images)
  assert images.shape == (2, size, size, 3) and np.isfinite(images).all()
  assert images.min() >= -1 and images.max() <= 1
