"""Runs the next-token smoke config in a fresh process (fake devices set before JAX starts) and
writes the final loss and parameters to an npz. Used by the sharding and checkpoint tests."""
import argparse
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--workdir", required=True)
parser.add_argument("--out", default="")
parser.add_argument("--devices", type=int, default=1)
parser.add_argument("--mesh", default="-1,1,1")
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--stop_at", type=int, default=0)
parser.add_argument("--batch", type=int, default=8)
args = parser.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/arjax_jax_tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from arjax import config as config_lib  # noqa: E402
from arjax import registry  # noqa: E402
from arjax.train import loop  # noqa: E402

cfg = config_lib.load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "shapes",
                                          "next_token.py") + ":smoke")
cfg.mesh.shape = tuple(int(x) for x in args.mesh.split(","))
cfg.train.update(steps=args.steps, stop_at_step=args.stop_at, ckpt_every=1000, log_every=1, progress=False,
                 ema_decay=0.5)
cfg.data.batch_size = args.batch
state, metrics = loop.train(cfg, args.workdir, registry.build_model(cfg))
if args.out:
  flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(
      dict(params=state.params, ema=state.ema_params))}
  shards = {jax.tree_util.keystr(k): len({str(s.index) for s in v.addressable_shards})
            for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
  np.savez(args.out, loss=metrics["loss"], step=int(state.step), max_distinct_shards=max(shards.values()),
           **flat)
print("done", int(state.step), metrics["loss"])
