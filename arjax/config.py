"""Config plumbing: the shared sections every experiment has, and loading a config file by path."""
from __future__ import annotations

import importlib.util
import os

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Sections shared by all experiments; each is locked so a misspelt key is an error."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = dict(name="shapes", batch_size=64, image_size=32, num_examples=50_000,
                colours=("red", "blue"), shuffle=True, repeat=True)
  c.optim = dict(lr=1e-3, warmup_steps=100, schedule="cosine", final_lr_frac=0.1, weight_decay=0.05,
                 b1=0.9, b2=0.95, clip=1.0)
  c.train = dict(steps=1000, grad_accum=1, compute_dtype="float32", ema_decay=0.999, log_every=50,
                 ckpt_every=500, keep_checkpoints=2, sample_every=0, num_sample_images=16,
                 maintain_every=0, progress=True, stop_at_step=0)
  c.mesh = dict(shape=(-1, 1, 1), rules=None)
  # compute_dtype / int8 / int8_head / cache_dtype: inference precision (arjax.nn.quant; logits and sampling stay f32;
  # int8_head: the logits head int8 too, where a model's greedy tokens were checked against f32;
  # compute_dtype 'auto' = bf16 on accelerators and AMX CPUs, f32 on other CPUs;
  # cache_dtype 'auto' = f32 on CPU, the compute dtype elsewhere; 'compute' = the compute dtype everywhere)
  c.sample = dict(temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0, cfg_schedule="constant",
                  compute_dtype="auto", int8=False, int8_head=False, cache_dtype="auto")
  c.evals = ml_collections.ConfigDict()
  for section in ("data", "optim", "train", "mesh", "sample"):
    c[section].lock()
  return c


def parse_arg(arg, **defaults) -> ml_collections.ConfigDict:
  """get_config's argument as a namespace, big_vision style: 'smoke,d16,steps=10' with defaults
  (smoke=False, d16=False, steps=0) -> smoke=True, d16=True, steps=10. A bare name sets a bool default to
  True; name=value is converted to the default's type; a name without a default is an error naming them."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    name, eq, value = (x.strip() for x in item.partition("="))
    if name not in defaults:
      raise ValueError(f"unknown preset {name!r} in config argument {arg!r}; allowed: "
                       f"{', '.join(sorted(defaults)) or 'none (this config has no presets)'}")
    default = defaults[name]
    if isinstance(default, bool):
      if eq and value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {name}={value!r} must be a bool (true/false/1/0)")
      out[name] = not eq or value.lower() in ("true", "1")
    elif not eq:
      raise ValueError(f"config argument {name!r} needs a value: {name}=<{type(default).__name__}>")
    else:
      try:
        out[name] = type(default)(value)
      except ValueError:
        raise ValueError(f"config argument {name}={value!r} must be of type {type(default).__name__}") from None
  return out


def load_config(spec: str) -> ml_collections.ConfigDict:
  """'path/to/config.py[:arg]' -> get_config(arg)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} not found")
  mod_spec = importlib.util.spec_from_file_location(f"arjax_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def check_keys(section, allowed, where: str):
  """Raises if `section` has keys outside `allowed` (a typo in a config is an error, not a no-op)."""
  unknown = sorted(set(section.keys()) - set(allowed))
  if unknown:
    raise ValueError(f"unknown key(s) {unknown} in config.{where}; expected a subset of {sorted(allowed)}")
