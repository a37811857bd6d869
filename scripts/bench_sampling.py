"""Times class-conditional sampling of VAR-d16 (random weights, 256px, CFG on) in arjax and counts
forward passes against next-token LlamaGen-B. With --official PATH (a local checkout of the official
VAR repository; never vendored here) it also times the official PyTorch sampler on the same batch. With
--compare REV it also times the same sampler in a git worktree of revision REV (e.g. the commit before a
refactor), each in its own process, alternating A/B/A/B, and prints the ratio.

  JAX_PLATFORMS=cpu python scripts/bench_sampling.py --batch 2 [--official /path/to/VAR] [--repeats 2] \
      [--compare REV]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from arjax import config as config_lib  # noqa: E402
from arjax import registry  # noqa: E402


def build(config_path: str):
  """(model, random params) for a config, tokenizer randomly initialised."""
  cfg = config_lib.load_config(config_path)
  model = registry.build_model(cfg)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), None))
  return cfg, model, params


def time_call(fn, repeats: int):
  """(first call incl. compile, best of `repeats` later calls) in seconds."""
  t = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return first, best


# Run in a subprocess with a checkout's root first on sys.path: prints {"best": s, "first": s} for VAR-d16.
_CHILD = """
import json, os, sys
root, batch, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, root)
sys.path.insert(0, os.path.join(root, "scripts"))
import jax, jax.numpy as jnp
import bench_sampling as b
cfg, model, params = b.build(os.path.join(root, "configs/imagenet256/var_d16.py"))
labels = jnp.arange(batch, dtype=jnp.int32) % model.num_classes
cond = {"label": labels} if os.path.exists(os.path.join(root, "arjax/conditioning.py")) else labels  # v1 API
first, best = b.time_call(lambda: model.sample(params, cond, jax.random.PRNGKey(0), **dict(cfg.sample)), repeats)
print(json.dumps(dict(first=first, best=best)))
"""


def checkout_seconds(root: str, batch: int, repeats: int) -> dict:
  """VAR-d16 sampling times of the arjax checkout at `root`, in a fresh process."""
  out = subprocess.run([sys.executable, "-c", _CHILD, root, str(batch), str(repeats)], capture_output=True,
                       text=True, check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  return json.loads(out.stdout.strip().splitlines()[-1])


def compare(rev: str, batch: int, repeats: int, rounds: int = 2):
  """Best VAR-d16 sampling seconds of this checkout and of a worktree at `rev`, alternating processes."""
  with tempfile.TemporaryDirectory() as tmp:
    other = os.path.join(tmp, "rev")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", other, rev], check=True, capture_output=True)
    try:
      now, then = [], []
      for _ in range(rounds):
        now.append(checkout_seconds(ROOT, batch, repeats)["best"])
        then.append(checkout_seconds(other, batch, repeats)["best"])
    finally:
      subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", other], check=True, capture_output=True)
  return min(now), min(then)


def official_var_seconds(path: str, batch: int, repeats: int, cfg: float, top_k: int, top_p: float):
  """Best wall time of the official VAR-d16 autoregressive_infer_cfg (random weights) on CPU."""
  import types
  import torch
  sys.path.insert(0, path)
  if "huggingface_hub" not in sys.modules:
    try:
      import huggingface_hub  # noqa: F401
    except ImportError:
      stub = types.ModuleType("huggingface_hub")
      stub.PyTorchModelHubMixin = object
      sys.modules["huggingface_hub"] = stub
  from models import build_vae_var
  torch.set_grad_enabled(False)
  vae, var_model = build_vae_var(device="cpu", depth=16, flash_if_available=False, fused_if_available=False)
  for param in list(vae.parameters()) + list(var_model.parameters()):  # build_vae_var leaves them uninitialised
    param.normal_(0, 0.02)
  var_model.eval()
  label = torch.arange(batch) % 1000
  best = float("inf")
  for _ in range(repeats + 1):
    t = time.perf_counter()
    var_model.autoregressive_infer_cfg(B=batch, label_B=label, g_seed=0, cfg=cfg, top_k=top_k, top_p=top_p)
    best = min(best, time.perf_counter() - t)
  return best


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--official", default="", help="local checkout of the official VAR repository")
  p.add_argument("--compare", default="", help="git revision to time side by side (e.g. the commit before a change)")
  a = p.parse_args()
  if a.compare:
    now, then = compare(a.compare, a.batch, a.repeats)
    print(f"VAR-d16 sampling, batch {a.batch}, best of {a.repeats} x 2 processes each: this checkout {now:.2f} s, "
          f"{a.compare} {then:.2f} s; ratio now / then = {now / then:.2f}")
    return
  cfg, model, params = build(os.path.join(ROOT, "configs/imagenet256/var_d16.py"))
  labels = jnp.arange(a.batch, dtype=jnp.int32) % model.num_classes
  opts = dict(cfg.sample)
  first, best = time_call(lambda: model.sample(params, {"label": labels}, jax.random.PRNGKey(0), **opts), a.repeats)
  lg_cfg = config_lib.load_config(os.path.join(ROOT, "configs/imagenet256/llamagen_b.py"))
  lg_tokens = 16 * 16
  print(f"device: {jax.devices()[0].device_kind}, batch {a.batch}, 256px, CFG {opts['cfg_scale']} "
        f"({opts['cfg_schedule']}), top_k {opts['top_k']}, top_p {opts['top_p']}")
  print(f"arjax VAR-d16: {best:.2f} s per batch (first call incl. compile {first:.1f} s); "
        f"{len(model.patch_nums)} forward passes over {model.num_tokens} tokens")
  print(f"next-token LlamaGen-B ({lg_cfg.model.transformer.depth} layers): {lg_tokens} forward passes over "
        f"{lg_tokens} tokens -> {lg_tokens / len(model.patch_nums):.1f}x more passes than VAR")
  if a.official:
    # VAR's cfg=c ramps 1 -> 1+c, i.e. arjax cfg_scale = 1 + c
    sec = official_var_seconds(a.official, a.batch, a.repeats, opts["cfg_scale"] - 1, opts["top_k"], opts["top_p"])
    print(f"official VAR-d16 (PyTorch, same machine and batch): {sec:.2f} s per batch; "
          f"time ratio arjax / official = {best / sec:.2f}")


if __name__ == "__main__":
  main()
