"""Run an experiment's evaluators (config.evals) on a trained checkpoint:

  python -m arjax.evaluate --config configs/shapes/next_token.py --checkpoint runs/nt [--num_samples 5000]

--checkpoint is a workdir (its checkpoints/ is used) or a checkpoints directory; the latest step is
evaluated (EMA params unless --noema). Results go to stdout, to --output (default
<workdir>/eval/step<N>.json) and to TensorBoard scalars '<eval>/<metric>' under <workdir>/tb.
With --multihost, jax.distributed.initialize() is called first and every process runs this command.
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
  flags.DEFINE_string("checkpoint", None, "Workdir or checkpoints directory to evaluate.", required=True)
  flags.DEFINE_integer("num_samples", None, "Overrides num_samples of every evaluator.")
  flags.DEFINE_list("only", None, "Run only these evaluators (names in config.evals).")
  flags.DEFINE_string("output", None, "JSON output path (default <workdir>/eval/step<N>.json).")
  flags.DEFINE_bool("ema", True, "Evaluate the EMA parameters.")
  flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
  config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).", lock_config=False)


def checkpoint_dirs(path: str):
  """(workdir, checkpoints dir) from either of them."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return path, os.path.join(path, "checkpoints")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--checkpoint {path!r} does not exist")
  return os.path.dirname(path), path


def select_evals(evals_cfg, only=None, num_samples=None) -> dict:
  """config.evals as plain dicts, optionally filtered by name and with num_samples overridden."""
  evals = {k: dict(v) for k, v in evals_cfg.items()}
  if not evals:
    raise ValueError("the config has no evaluators; add config.evals.<name> = dict(type='fid'|'judge'|..., ...)")
  unknown = sorted(set(only or ()) - set(evals))
  if unknown:
    raise ValueError(f"--only names {unknown} not in config.evals ({sorted(evals)})")
  evals = {k: v for k, v in evals.items() if not only or k in only}
  if num_samples:
    evals = {k: dict(v, num_samples=num_samples) for k, v in evals.items()}
  return evals


def evaluate(config, checkpoint: str, *, num_samples=None, only=None, ema=True, output=None) -> dict:
  """Runs the config's evaluators on the checkpoint's latest step; returns {'<eval>/<metric>': value}."""
  import jax
  from arjax import registry
  from arjax.eval import build_evaluators
  from arjax.train import checkpoint as ckpt_lib
  workdir, ckpt_dir = checkpoint_dirs(checkpoint)
  evals = select_evals(config.evals, only, num_samples)
  model = registry.build_model(config)
  step = ckpt_lib.Checkpointer(ckpt_dir, create=False).latest_step()
  params = ckpt_lib.load_params(ckpt_dir, ema=ema)
  results = {}
  for ev in build_evaluators(evals, model, workdir, data_cfg=config.data, sample_cfg=config.sample):
    for k, v in ev.run(params, jax.random.PRNGKey(config.seed), step).items():
      results[f"{ev.name}/{k}"] = float(v)
  if jax.process_index() == 0:
    write_results(results, step, output or os.path.join(workdir, "eval", f"step{step}.json"),
                  os.path.join(workdir, "tb"), ckpt_dir)
  return results


def write_results(results: dict, step: int, path: str, tb_dir: str, checkpoint: str):
  """JSON file and TensorBoard scalars."""
  from tensorboardX import SummaryWriter
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(dict(step=step, checkpoint=checkpoint, metrics=results), f, indent=1)
  with SummaryWriter(tb_dir) as writer:
    for k, v in results.items():
      writer.add_scalar(k, v, step)


def main(argv):
  del argv
  import jax
  if FLAGS.multihost:
    jax.distributed.initialize()
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/arjax_jax"))
  results = evaluate(FLAGS.config, FLAGS.checkpoint, num_samples=FLAGS.num_samples, only=FLAGS.only,
                     ema=FLAGS.ema, output=FLAGS.output)
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  define_flags()
  cli.run_absl(main)
