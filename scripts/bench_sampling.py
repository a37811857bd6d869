"""Sampling speed of VAR-d16 and LlamaGen-B (random weights, 256 px, batch 2, CFG on), arjax in f32 / bf16 / int8
against the official PyTorch samplers in f32 / bf16, measured side by side in one run on this machine.

  JAX_PLATFORMS=cpu python scripts/bench_sampling.py [--batch 2] [--repeats 2] \
      [--official-var /path/to/VAR] [--official-llamagen /path/to/LlamaGen] [--models var,llamagen] \
      [--compare REV]

Official code is read from local checkouts (never vendored). VAR is timed image-out (tokens + VQ decode, as
`autoregressive_infer_cfg` returns images) and tokens-only; LlamaGen tokens-only (its `generate`). bf16 is
`torch.autocast` for VAR (its sample script) and bf16 weights for LlamaGen (its sample script's default); arjax's
is `compute_dtype='bfloat16'` (bf16 weights, f32 accumulation, f32 sampling; KV caches per `cache_dtype`), with
params prepared once per precision by `quant.for_inference` (as LlamaGen's bf16 weights are converted once; VAR's
autocast casts inside every call). The samplers of a model are timed round-robin (a first call each, then one
call each per round), so a machine whose speed drifts slows them alike. Each row prints seconds per batch (best
of --repeats), the first call's extra time (compile), tokens/s, the ratio to the official bf16 sampler and the
1-minute load average; figures taken with load > 0.5 are marked as such. Greedy
(temperature 0) token agreement of bf16 / int8 with arjax f32 is printed per model. `--compare REV` times arjax
VAR-d16 in a git worktree of REV in its own process (A/B/A/B).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from arjax import config as config_lib  # noqa: E402
from arjax import host  # noqa: E402
from arjax import registry  # noqa: E402
from arjax.nn import quant  # noqa: E402
from arjax.paradigms import next_scale  # noqa: E402
from arjax.sampling import loop  # noqa: E402

CONFIGS = {"var": "configs/imagenet256/var_d16.py", "llamagen": "configs/imagenet256/llamagen_b.py"}
# int8: int8 Dense kernels, the rest in the default compute dtype ('auto': bf16 with AMX, else f32)
MODES = {"f32": dict(compute_dtype="float32"), "bf16": dict(compute_dtype="bfloat16"),
         "int8": dict(compute_dtype="auto", int8=True),
         "int8+kv8": dict(compute_dtype="auto", int8=True, cache_dtype="int8")}  # + an int8 KV cache
# VAR's scales attend with up to 256 query rows per head, which XLA serves (an int8 cache would be dequantised)
DEFAULT_MODES = {"var": ("f32", "bf16", "int8"), "llamagen": tuple(MODES)}


def build(config_path: str):
  """(cfg, model, random params) for a config, tokenizer randomly initialised."""
  cfg = config_lib.load_config(config_path)
  model = registry.build_model(cfg)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), None))
  return cfg, model, params


def seconds(fn) -> float:
  """Wall seconds of one call of fn, its results ready."""
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


def time_call(fn, repeats: int):
  """(first call incl. compile, best of `repeats` later calls) in seconds."""
  first = seconds(fn)
  return first, min(seconds(fn) for _ in range(repeats))


def token_sampler(model, extra=None):
  """A jitted tokens-only sampler (the paradigm's sample_tokens through the sampler decorator)."""
  fn = loop.sampler(extra)(lambda self, params, cond, rng, opts: jax.tree.leaves(
      self.sample_tokens(params, cond, rng, opts))[0])
  return lambda params, cond, rng, **opts: fn(model, params, cond, rng, **opts)


def arjax_runners(name: str, batch: int, modes=tuple(MODES)):
  """(row, run) per arjax sampler (each precision of `modes`; VAR also image-out), a function computing the greedy
  agreement of each precision with f32 (after the timing, whose first calls are the compiles), tokens per image."""
  cfg, model, params = build(os.path.join(ROOT, CONFIGS[name]))
  cond = {"label": jnp.arange(batch, dtype=jnp.int32) % model.num_classes}
  tokens_fn = token_sampler(model, next_scale.SAMPLE_OPTIONS if name == "var" else None)
  opts = dict(cfg.sample)
  runners, greedy = [], {}
  for mode in modes:
    prec = MODES[mode]
    # prepared once per precision, as LlamaGen's bf16 weights are converted once; the sampler's own cast is then free
    ready = jax.jit(quant.for_inference, static_argnums=(1, 2, 3))(params, prec["compute_dtype"],
                                                                   prec.get("int8", False), opts["int8_head"])
    targets = [("tokens", tokens_fn)] + ([("image", model.sample)] if name == "var" else [])
    for what, fn in targets:
      run = lambda fn=fn, ready=ready, prec=prec: fn(ready, cond, jax.random.PRNGKey(0), **dict(opts, **prec))
      runners.append((dict(model=name, impl="arjax", mode=mode, what=what, tokens=batch * model.num_tokens), run))
    greedy[mode] = lambda ready=ready, prec=prec: np.asarray(
        tokens_fn(ready, cond, jax.random.PRNGKey(0), **dict(opts, **prec, temperature=0.0)))

  def agreement():
    tokens = {m: fn() for m, fn in greedy.items()}
    return {m: float((tokens[m] == tokens["f32"]).mean()) for m in tokens if m != "f32" and "f32" in tokens}

  return runners, agreement, model.num_tokens


def time_rows(runners, repeats: int) -> list[dict]:
  """Rows with seconds (best of `repeats`) and compile (first call minus best) for (row, run) pairs, timed
  round-robin after one first call each, so that a machine whose speed drifts during the run slows every
  sampler alike; load is the highest 1-minute load average seen after the row's timed calls."""
  first = [seconds(run) for _, run in runners]
  best, load = [float("inf")] * len(runners), [0.0] * len(runners)
  for _ in range(repeats):
    for i, (_, run) in enumerate(runners):
      best[i], load[i] = min(best[i], seconds(run)), max(load[i], host.load())
  rows = [dict(row, seconds=b, compile=f - b, load=l) for (row, _), f, b, l in zip(runners, first, best, load)]
  for row in rows:
    print(json.dumps(row), flush=True)
  return rows


def official_var(path: str, batch: int, opts: dict, tokens_per_image: int):
  """(row, run) pairs for the official VAR-d16 autoregressive_infer_cfg (random weights) in f32 and bf16 autocast."""
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

  def runner(mode):
    def run():
      with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):  # VAR's cfg=c ramps 1 -> 1 + c
        var_model.autoregressive_infer_cfg(B=batch, label_B=label, g_seed=0, cfg=opts["cfg_scale"] - 1,
                                           top_k=opts["top_k"], top_p=opts["top_p"])
      return jnp.zeros(())
    return dict(model="var", impl="official", mode=mode, what="image", tokens=batch * tokens_per_image), run

  return [runner("f32"), runner("bf16")]


def official_llamagen(path: str, batch: int, opts: dict):
  """(row, run) pairs for the official LlamaGen GPT-B `generate` (random weights, 256 tokens), f32 and bf16 weights."""
  import torch
  sys.path.insert(0, path)
  from autoregressive.models.generate import generate
  from autoregressive.models.gpt import GPT_models
  torch.set_grad_enabled(False)
  runners = []
  for mode, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
    torch.manual_seed(0)
    model = GPT_models["GPT-B"](vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1,
                                model_type="c2i").to(dtype).eval()
    cond = torch.arange(batch) % 1000

    def run(model=model):
      generate(model, cond, 256, cfg_scale=opts["cfg_scale"], temperature=opts["temperature"], top_k=opts["top_k"],
               top_p=opts["top_p"], sample_logits=True)
      return jnp.zeros(())
    runners.append((dict(model="llamagen", impl="official", mode=mode, what="tokens", tokens=batch * 256), run))
  return runners


def table(rows, start_load: float) -> str:
  """Markdown table; ratio = seconds / official bf16 seconds of the same model and output. `load` is the highest
  1-minute load average seen while the row was timed (the benchmark's own threads included); a start load > 0.5
  marks every row."""
  ref = {(r["model"], r["what"]): r["seconds"] for r in rows if r["impl"] == "official" and r["mode"] == "bf16"}
  lines = ["| model | output | sampler | precision | s / batch | tokens/s | compile s | / official bf16 | load |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    ratio = ref.get((r["model"], r["what"]))
    vs = "" if ratio is None else f"{r['seconds'] / ratio:.2f}x"
    lines.append(f"| {r['model']} | {r['what']} | {r['impl']} | {r['mode']} | {r['seconds']:.2f} | "
                 f"{r['tokens'] / r['seconds']:.0f} | {r['compile']:.1f} | "
                 f"{vs} | {r['load']:.2f}{' (loaded)' if start_load > 0.5 else ''} |")
  return "\n".join(lines)


DECODE_CASES = (("float32", "xla", "auto"), ("float32", "auto", "auto"), ("bfloat16", "xla", "auto"),
                ("bfloat16", "auto", "auto"), ("int8", "auto", "auto"), ("float32", "auto", "int8"),
                ("int8", "auto", "int8"))  # (cache dtype, attention impl, weights); 'auto' impl on CPU = the C++
# decode kernel; 'auto' weights = the default compute dtype, 'int8' = int8 Dense kernels (the rest in 'auto')


def decode_scaling(batch: int, lengths=(64, 256, 1024), steps: int = 32, cases=DECODE_CASES):
  """ms per decoded token of LlamaGen-B's transformer (CFG batch) with the cache filled to each length, for each
  (cache dtype, attention impl, weights); lengths interleaved per round."""
  from arjax import masks
  from arjax.nn.transformer import Transformer, TransformerConfig
  cfg = config_lib.load_config(os.path.join(ROOT, CONFIGS["llamagen"]))
  rows = 2 * batch
  compute = quant.dtype_of("auto")
  make = lambda impl: TransformerConfig.make(cfg.model.transformer, width=cfg.model.width, max_len=max(lengths),
                                            pos="rope1d", impl=impl)
  x = jnp.zeros((rows, 1, cfg.model.width))
  init = nn.meta.unbox(Transformer(make("xla")).init(jax.random.PRNGKey(0), x, masks.causal())["params"])
  # one init serves every case (the impl changes no parameter), prepared once per weight precision
  weights = {w: quant.for_inference(init, compute, w == "int8") for w in {c[2] for c in cases}}
  runs = {}
  for dtype, impl, w in cases:
    tcfg = make(impl)
    net = Transformer(tcfg)

    @jax.jit
    def decode(params, cache, net=net, x=x):
      body = lambda i, c: net.apply({"params": params}, x, masks.causal(), cache=c)[1]
      return jax.lax.fori_loop(0, steps, body, cache)

    for length in lengths:  # the last `steps` tokens of a `length`-token sequence
      cache = tcfg.init_cache(rows, length, quant.cache_dtype_of(dtype, compute))
      filled = jnp.arange(length) < length - steps
      cache = cache.replace(end_B=jnp.full((rows,), length - steps, jnp.int32),
                            pos_BS=jnp.broadcast_to(jnp.where(filled, jnp.arange(length), -1), (rows, length)))
      runs[dtype, impl, w, length] = functools.partial(decode, weights[w], cache)
  best = {key: time_call(fn, 1)[1] for key, fn in runs.items()}  # compile + one timed call each
  for _ in range(2):  # then rounds over every case, so load drifts hit them alike
    for key, fn in runs.items():
      best[key] = min(best[key], time_call(fn, 1)[1])
  for dtype, impl, w in cases:
    ms = {n: 1e3 * best[dtype, impl, w, n] / steps for n in lengths}
    label = "int8" if w == "int8" else compute.name
    print(f"per-token decode (LlamaGen-B transformer, {label} weights, {dtype} cache, attention {impl}, "
          f"batch {batch} with CFG): " + ", ".join(f"{n} tokens {v:.1f} ms" for n, v in ms.items()) +
          f"; {max(lengths)} / {min(lengths)} = {ms[max(lengths)] / ms[min(lengths)]:.2f}x; load {host.load():.2f}",
          flush=True)


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


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--models", default="var,llamagen")
  p.add_argument("--modes", default="", help=f"arjax precisions to time, of {','.join(MODES)} (default: "
                 f"{'; '.join(f'{m}: {chr(44).join(v)}' for m, v in DEFAULT_MODES.items())})")
  p.add_argument("--official-var", default="", help="local checkout of the official VAR repository")
  p.add_argument("--official-llamagen", default="", help="local checkout of the official LlamaGen repository")
  p.add_argument("--readme", action="store_true", help="write the table into README.md between its bench markers")
  p.add_argument("--decode-scaling", action="store_true", help="per-token decode cost at 64 / 256 / 1024 tokens")
  p.add_argument("--compare", default="", help="git revision to time side by side (e.g. the commit before a change)")
  p.add_argument("--allocator", default="", choices=["", "glibc", "tcmalloc", "jemalloc"],
                 help="run with this memory allocator, both sides (re-executes the process; default: as started)")
  a = p.parse_args()
  if a.allocator:
    host.run_with(a.allocator)
  if a.compare:
    now, then = compare(a.compare, a.batch, a.repeats)
    print(f"VAR-d16 sampling, batch {a.batch}, best of {a.repeats} x 2 processes each: this checkout {now:.2f} s, "
          f"{a.compare} {then:.2f} s; ratio now / then = {now / then:.2f}; load {host.load():.2f}")
    return
  start_load = host.load()
  print(f"{host.describe()} (before the run), batch {a.batch}", flush=True)
  if a.decode_scaling:
    decode_scaling(a.batch)
    return
  rows, agree = [], {}
  for name in a.models.split(","):
    cfg = config_lib.load_config(os.path.join(ROOT, CONFIGS[name]))
    modes = tuple(a.modes.split(",")) if a.modes else DEFAULT_MODES[name]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
      raise ValueError(f"--modes {unknown}: expected some of {list(MODES)}")
    runners, agreement, num_tokens = arjax_runners(name, a.batch, modes)
    official = a.official_var if name == "var" else a.official_llamagen
    if official and name == "var":
      runners = official_var(official, a.batch, dict(cfg.sample), num_tokens) + runners
    elif official:
      runners = official_llamagen(official, a.batch, dict(cfg.sample)) + runners
    rows += time_rows(runners, a.repeats)
    agree[name] = agreement()
  text = "\n".join([table(rows, start_load)] + [f"{name}: greedy-token agreement with arjax f32: " + ", ".join(
      f"{m} {100 * v:.1f}%" for m, v in shares.items()) for name, shares in agree.items()])
  print(text)
  if a.readme:
    write_readme(text, f"`JAX_PLATFORMS=cpu python scripts/bench_sampling.py {' '.join(sys.argv[1:])}` "
                       f"({os.cpu_count()} cpus, {host.amx_label()}, allocator: {host.allocator()}, batch {a.batch})")


def write_readme(text: str, how: str, path: str = os.path.join(ROOT, "README.md")):
  """Replaces the text between README's `<!-- bench_sampling -->` and `<!-- /bench_sampling -->` lines."""
  with open(path) as f:
    readme = f.read()
  start, end = "<!-- bench_sampling -->", "<!-- /bench_sampling -->"
  if start not in readme or end not in readme:
    raise ValueError(f"{path} has no {start} ... {end} block to write the table into")
  head, rest = readme.split(start, 1)
  with open(path, "w") as f:
    f.write(f"{head}{start}\n{how}:\n\n{text}\n{end}{rest.split(end, 1)[1]}")


if __name__ == "__main__":
  main()
