"""python -m arjax.convert --from var|llamagen --ckpt FILE [--vae FILE] --out DIR [--config CFG] [--select ema]
    [--overwrite]"""
from __future__ import annotations

import os
import shutil

from arjax import cli
from arjax import config as config_lib
from arjax import registry
from arjax.convert import common, llamagen, var

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FORMATS = {
    "var": (var.convert_var, var.convert_vqvae, "configs/imagenet256/var_d16.py"),
    "llamagen": (llamagen.convert_gpt, llamagen.convert_vq, "configs/imagenet256/llamagen_b.py"),
}


def convert(fmt: str, ckpt: str, vae: str, out: str, config: str = "", select: str = "auto", overwrite: bool = False):
  """Converts the paradigm checkpoint (and the tokenizer's, if given) and writes them under `out`; an earlier
  conversion there is an error unless `overwrite` (then its checkpoints/ and tokenizer/ are replaced)."""
  if fmt not in FORMATS:
    raise ValueError(f"--from must be one of {sorted(FORMATS)}, got {fmt!r}")
  written = [d for d in ("checkpoints", "tokenizer") if os.path.exists(os.path.join(out, d))]
  if written and not overwrite:
    raise ValueError(f"--out {out!r} already holds {written} from an earlier conversion; pass --overwrite to "
                     f"replace them or choose another --out")
  model_fn, tok_fn, default_cfg = FORMATS[fmt]
  cfg = config_lib.load_config(config or os.path.join(ROOT, default_cfg))
  tcfg = config_lib.load_config(cfg.tokenizer.config)
  tokenizer = registry.resolve(tcfg.model.name)(tcfg.model)
  for d in written:
    shutil.rmtree(os.path.join(out, d))
  tok_params = None
  if vae:
    tok_params = tok_fn(common.load_state_dict(vae, select), tokenizer)
    common.save_params(tok_params, os.path.join(out, "tokenizer"))
    print(f"tokenizer: {vae} -> {os.path.join(out, 'tokenizer', 'checkpoints')}")
  model = registry.resolve(cfg.model.name)(cfg.model, tokenizer, tok_params)
  params = model_fn(common.load_state_dict(ckpt, select), model)
  common.save_params(params, out)
  print(f"model: {ckpt} -> {os.path.join(out, 'checkpoints')}")
  return params, tok_params


def main():
  p = cli.ArgumentParser(description=__doc__)
  p.add_argument("--from", dest="fmt", required=True, choices=sorted(FORMATS))
  p.add_argument("--ckpt", required=True, help="the AR model's .pth/.pt/.safetensors")
  p.add_argument("--vae", default="", help="the tokenizer's checkpoint (written to OUT/tokenizer)")
  p.add_argument("--out", required=True)
  p.add_argument("--config", default="", help="arjax config whose architecture the weights fit")
  p.add_argument("--select", default="auto", help="entry of a wrapped checkpoint: auto, model, ema, ...")
  p.add_argument("--overwrite", action="store_true", help="replace an earlier conversion in --out")
  a = p.parse_args()
  convert(a.fmt, a.ckpt, a.vae, a.out, a.config, a.select, a.overwrite)


if __name__ == "__main__":
  cli.run_cli(main)
