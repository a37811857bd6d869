"""Shared converter pieces: safe loading, torch -> flax layouts, checking against the expected tree."""
from __future__ import annotations

import functools
import os
import re

import flax
import jax
import numpy as np


class ConversionError(ValueError):
  """A state_dict does not fit the target architecture (names the key, the shapes expected and found)."""


def load_state_dict(path: str, select: str = "auto") -> dict:
  """name -> np.float32 array from a .safetensors, .npz or torch file (torch.load(weights_only=True), never a
  free unpickle). Wrapped dicts are unwrapped: select='ema'|'model'|... or 'auto' (model, module,
  state_dict, else the dict itself)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint file {path!r} not found")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file as read
  elif path.endswith(".npz"):
    read = read_npz
  else:
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"reading {path!r} needs torch: pip install -e '.[torch]' (or save it as .npz)") from e
    read = functools.partial(torch.load, map_location="cpu", weights_only=True)
  try:
    obj = read(path)
  except Exception as e:  # pickle, zip, safetensors and runtime errors for a file that is not a checkpoint
    raise ConversionError(f"{path!r} is not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from e
  if not isinstance(obj, dict):
    raise ConversionError(f"{path!r} holds a {type(obj).__name__}; expected a state_dict (name -> tensor)")
  return to_numpy(unwrap(obj, select, path))


def read_npz(path: str) -> dict:
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def unwrap(obj: dict, select: str, where: str = "checkpoint") -> dict:
  """Picks the state_dict inside a training checkpoint ({'model': ..., 'ema': ...} etc.)."""
  if select != "auto":
    if select not in obj:
      raise ConversionError(f"{where} has no {select!r} entry; top-level keys: {sorted(obj)[:20]}")
    return obj[select]
  for k in ("model", "module", "state_dict"):
    if k in obj and isinstance(obj[k], dict):
      return obj[k]
  return obj


def to_numpy(sd: dict) -> dict:
  return {k: v.detach().float().cpu().numpy() if hasattr(v, "detach") else np.asarray(v, np.float32)
          for k, v in sd.items()}


def linear(w):
  """torch Linear weight [out, in] -> flax kernel [in, out]."""
  return w.T


def conv(w):
  """torch Conv2d weight OIHW -> flax HWIO."""
  return w.transpose(2, 3, 1, 0)


def conv_net_rules(prefix: str, out: str):
  """(regex, replacement) renames for the LDM/taming encoder/decoder module paths (VAR and LlamaGen)."""
  p = re.escape(prefix)
  return [(rf"^{p}down\.(\d+)\.block\.(\d+)\.", rf"{out}/down_\1_block_\2/"),
          (rf"^{p}down\.(\d+)\.attn\.(\d+)\.", rf"{out}/down_\1_attn_\2/"),
          (rf"^{p}down\.(\d+)\.downsample\.conv\.", rf"{out}/down_\1_downsample/"),
          (rf"^{p}up\.(\d+)\.block\.(\d+)\.", rf"{out}/up_\1_block_\2/"),
          (rf"^{p}up\.(\d+)\.attn\.(\d+)\.", rf"{out}/up_\1_attn_\2/"),
          (rf"^{p}up\.(\d+)\.upsample\.conv\.", rf"{out}/up_\1_upsample/"),
          (rf"^{p}mid\.(block_1|attn_1|block_2)\.", rf"{out}/mid_\1/"),
          (rf"^{p}(conv_in|conv_out|norm_out)\.", rf"{out}/\1/")]


def conv_param(path: str, w):
  """Leaf rename + layout for a conv-net parameter: conv weights to HWIO kernels, norm weights to scale."""
  mod, leaf = path.rsplit("/", 1)
  if leaf == "bias":
    return f"{mod}/bias", w
  if w.ndim == 4:
    return f"{mod}/kernel", conv(w)
  return f"{mod}/scale", w  # GroupNorm


def rename(key: str, rules) -> str | None:
  for pat, rep in rules:
    new, n = re.subn(pat, rep, key)
    if n:
      return new.replace(".", "/")
  return None


def check_and_build(flat: dict, expected, source: str):
  """flat {arjax path: (torch key, array)} -> nested params with exactly the expected tree and shapes;
  raises ConversionError naming missing, unknown or mis-shaped params and their torch keys."""
  want = {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(expected)).items()}
  missing = sorted(set(want) - set(flat))
  if missing:
    raise ConversionError(f"{source}: no weights for arjax param(s) {missing[:8]}"
                          f"{' ...' if len(missing) > 8 else ''} (key(s) missing from the state_dict)")
  extra = sorted(set(flat) - set(want))
  if extra:
    raise ConversionError(f"{source}: key(s) {[flat[k][0] for k in extra[:8]]} map to {extra[:8]}, which the "
                          f"arjax model does not have (wrong architecture or config?)")
  for k, (tkey, v) in flat.items():
    if tuple(v.shape) != tuple(want[k].shape):
      raise ConversionError(f"{source}: key {tkey!r} gives param {k} of shape {tuple(v.shape)}, expected "
                            f"{tuple(want[k].shape)}")
  return flax.traverse_util.unflatten_dict({tuple(k.split("/")): np.asarray(v, np.float32)
                                            for k, (_, v) in flat.items()})


def convert_ldm_vq(sd: dict, expected, source: str, rename_key, drop=()):
  """A taming/LDM conv VQ (encoder, decoder, quant convs, codebook, phi convs) -> arjax MultiScaleVQ
  params. rename_key maps a torch key to the VAR-style dotted name (or None if unknown); fused 1x1
  qkv attention convs are split into q, k, v."""
  flat, unknown = {}, []
  rules = (conv_net_rules("encoder.", "encoder") + conv_net_rules("decoder.", "decoder") +
           [(r"^(quant_conv|post_quant_conv)\.", r"\1/"),
            (r"^quantize\.quant_resi\.qresi_ls\.(\d+)\.", r"phi_\1/"),
            (r"^quantize\.quant_resi\.qresi\.", r"phi_0/")])
  for key, w in sd.items():
    if key in drop or any(key.endswith(d) for d in drop):
      continue
    name = rename_key(key)
    if name == "quantize.embedding.weight":
      flat["embedding"] = (key, w)
      continue
    path = None if name is None else rename(name, rules)
    if path is None:
      unknown.append(key)
      continue
    if "/qkv/" in path:
      for part, chunk in zip("qkv", np.split(w, 3, axis=0)):
        p, v = conv_param(path.replace("/qkv/", f"/{part}/"), chunk)
        flat[p] = (key, v)
    else:
      p, v = conv_param(path, w)
      flat[p] = (key, v)
  if unknown:
    raise ConversionError(f"{source}: unexpected key(s) {unknown[:8]} (not part of this VQ architecture)")
  return check_and_build(flat, expected, source)


def expect_shape(sd: dict, key: str, shape, source: str):
  """The array under `key`, which must have `shape` (clear error naming the key otherwise)."""
  if key not in sd:
    raise ConversionError(f"{source}: key {key!r} is missing from the state_dict")
  if tuple(sd[key].shape) != tuple(shape):
    raise ConversionError(f"{source}: key {key!r} has shape {tuple(sd[key].shape)}, expected {tuple(shape)}")
  return sd[key]


def abstract_params(model, batch):
  """Shapes of model.init(batch) params (no compute)."""
  return flax.linen.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))


def save_params(params, directory: str):
  """Writes params (as both params and ema_params) in the trainer's checkpoint layout."""
  from arjax.train import checkpoint
  ckpt = checkpoint.Checkpointer(os.path.join(directory, "checkpoints"), max_to_keep=1)
  ckpt.save(0, dict(params=params, ema_params=params), force=True)
  ckpt.wait()
