"""Train any arjax experiment:

  python -m arjax.main --config configs/shapes/next_token.py[:smoke] --workdir DIR [--config.a.b=v]

Multi-host: run the same command once per process (each host sees the same --workdir) with
  --coordinator HOST:PORT --num_processes N --process_id I
(or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); config.data.batch_size is the global batch.
"""
from __future__ import annotations

import json
import os

from absl import flags
from ml_collections import config_flags

from arjax import cli

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so importing this module is side-effect free)."""
  flags.DEFINE_string("workdir", None, "Where checkpoints, logs and samples go.", required=True)
  config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).", lock_config=True)
  flags.DEFINE_string("coordinator", None, "Multi-host: HOST:PORT of process 0 (default $JAX_COORDINATOR_ADDRESS).")
  flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes (default $JAX_NUM_PROCESSES or 1).")
  flags.DEFINE_integer("process_id", None, "Multi-host: this process, 0..N-1 (default $JAX_PROCESS_ID).")


def check_workdir(workdir: str):
  """Raises ValueError unless `workdir` is (or can be created as) a writable directory."""
  parent = workdir
  while not os.path.exists(parent):
    parent = os.path.dirname(os.path.abspath(parent))
  if not os.path.isdir(parent):
    raise ValueError(f"--workdir {workdir!r}: {parent!r} is not a directory")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir {workdir!r}: {parent!r} is not writable")


def run(config, workdir: str):
  """Builds the model and evaluators, trains, writes samples; returns the final metrics."""
  import jax
  from arjax import interfaces
  from arjax import registry
  from arjax.train import loop
  model = registry.build_model(config)
  evaluators = []
  if len(config.evals):
    from arjax import eval as eval_lib
    evaluators = eval_lib.build_evaluators(config.evals, model, workdir, data_cfg=config.data, sample_cfg=config.sample)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    with open(os.path.join(workdir, "run.json"), "w") as f:  # where this (possibly resumed) training ran
      json.dump(dict(device=jax.devices()[0].device_kind, num_devices=jax.device_count(), jax=jax.__version__), f)
  state, metrics = loop.train(config, workdir, model, evaluators)
  if interfaces.is_paradigm(model):
    path = os.path.join(workdir, "samples.png")
    loop.write_samples(model, state.ema_params, config, path)
    if jax.process_index() == 0:
      print(f"samples: {path}")
  return state, metrics


def main(argv):
  del argv
  check_workdir(FLAGS.workdir)
  from arjax import sharding
  sharding.init_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)  # before any other JAX op
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/arjax_jax"))
  _, metrics = run(FLAGS.config, FLAGS.workdir)
  if jax.process_index() == 0:
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
  define_flags()
  cli.run_absl(main)
