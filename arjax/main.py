"""Train any arjax experiment:

  python -m arjax.main --config configs/shapes/next_token.py[:smoke] --workdir DIR [--config.a.b=v]
"""
from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so importing this module is side-effect free)."""
  flags.DEFINE_string("workdir", None, "Where checkpoints, logs and samples go.", required=True)
  config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).", lock_config=True)


def run(config, workdir: str):
  """Builds the model and evaluators, trains, writes samples; returns the final metrics."""
  from arjax import registry
  from arjax.train import loop
  model = registry.build_model(config)
  evaluators = []
  if len(config.evals):
    from arjax import eval as eval_lib
    evaluators = eval_lib.build_evaluators(config.evals, model, workdir, data_cfg=config.data, sample_cfg=config.sample)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  state, metrics = loop.train(config, workdir, model, evaluators)
  if hasattr(model, "sample"):
    path = os.path.join(workdir, "samples.png")
    loop.write_samples(model, state.ema_params, config, path)
    print(f"samples: {path}")
  return state, metrics


def main(argv):
  del argv
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/arjax_jax"))
  _, metrics = run(FLAGS.config, FLAGS.workdir)
  print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
  define_flags()
  app.run(main)
