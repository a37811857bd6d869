"""What every paradigm holds: its model config (keys checked), the frozen tokenizer with its params, and the
Conditioner. Paradigms subclass it for these fields only; everything else is composed (layouts, nets, heads,
the sampler skeleton)."""
from __future__ import annotations

from arjax import conditioning
from arjax import config as config_lib

COND_KEYS = ("name", "num_classes", "cond", "label_drop")  # every paradigm's conditioning entries


class Paradigm:
  """cfg, tokenizer, tokenizer_params, conditioner, num_classes, grid (the tokenizer's token grid).

  A paradigm without a learned tokenizer (a codec's bytes, JPEG-LM) passes tokenizer=None: grid is then ()."""

  def __init__(self, cfg, tokenizer, tokenizer_params, keys):
    config_lib.check_keys(cfg, COND_KEYS + tuple(keys), "model")
    self.cfg = cfg
    self.tokenizer, self.tokenizer_params = tokenizer, tokenizer_params
    self.conditioner = conditioning.Conditioner.make(cfg)
    self.num_classes = self.conditioner.num_classes
    self.grid = tuple(tokenizer.grid) if tokenizer is not None else ()
