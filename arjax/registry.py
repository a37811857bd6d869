"""Name -> builder for everything a config can name (tokenizers and paradigms)."""
from __future__ import annotations

import importlib

from arjax import config as config_lib

# name -> "module:Class"; imported lazily so one broken paradigm does not break the others.
MODELS = {
    "masked_ar": "arjax.paradigms.masked_ar:MaskedAR",
    "vae": "arjax.tokenizers.vae:VAETokenizer",
    "block_diffusion": "arjax.paradigms.block_diffusion:BlockDiffusion",
    "next_x": "arjax.paradigms.next_x:NextX",
    "scale_flow": "arjax.paradigms.scale_flow:ScaleFlow",
    "vq": "arjax.tokenizers.vq:VQTokenizer",
    "next_token": "arjax.paradigms.next_token:NextToken",
    "msvq": "arjax.tokenizers.multiscale_vq:MultiScaleVQ",
    "next_scale": "arjax.paradigms.next_scale:NextScale",
    "next_frame": "arjax.paradigms.next_frame:NextFrame",          # LongLive-style video (issue 12)
    "any_order": "arjax.paradigms.any_order:AnyOrder",             # AS-ARM + ASSD (issue 13)
    "dimwise": "arjax.tokenizers.dimwise:DimwiseTokenizer",        # TokenBridge tokenizer (issue 14)
    "jpeg_lm": "arjax.paradigms.jpeg_lm:JpegLM",                   # JPEG bytes as tokens (issue 15)
    "interleaved": "arjax.paradigms.interleaved:Interleaved",      # Orthus (issue 16)
}


def resolve(name: str):
  if name not in MODELS:
    raise ValueError(f"unknown model name {name!r}; registered: {sorted(MODELS)}")
  module, cls = MODELS[name].split(":")
  return getattr(importlib.import_module(module), cls)


def build_tokenizer(tok_cfg):
  """(tokenizer, params) from config.tokenizer = {config: 'path.py[:arg]', workdir: DIR or None}."""
  tcfg = config_lib.load_config(tok_cfg.config)
  tokenizer = resolve(tcfg.model.name)(tcfg.model)
  if tok_cfg.workdir:
    from arjax.train import checkpoint
    params = checkpoint.load_params(f"{tok_cfg.workdir}/checkpoints", ema=tok_cfg.get("ema", True))
  else:  # untrained tokenizer: only for smoke tests of the paradigm
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    size = tcfg.data.image_size
    params = nn.meta.unbox(tokenizer.init(jax.random.PRNGKey(0),
                                          dict(image=jnp.zeros((1, size, size, 3)))))
  return tokenizer, params


def build_model(config):
  """The Trainable named by config.model.name (paradigms get their frozen tokenizer)."""
  cls = resolve(config.model.name)
  if "tokenizer" in config:
    return cls(config.model, *build_tokenizer(config.tokenizer))
  return cls(config.model)
