"""Markdown table of trained `shapes` runs: paradigm, head/solver steps, passes, steps, judge accuracy.

  python scripts/paradigm_table.py [--vae runs/vae] runs/mar runs/acdit runs/flowar runs/xar

With --vae, first prints the tokenizer's reconstruction PSNR on 512 held-out `shapes` images. Reads <workdir>/config.json and metrics.jsonl (written by arjax.main; the judge accuracy is the
last 'judge/accuracy' logged, i.e. config.evals.judge at the end of training).
"""
import json
import os
import sys


def head_steps(model: dict) -> str:
  """The per-token head's (or the per-entity ODE's) solver steps, with DiSA annealing if on."""
  h = model.get("head") or model.get("flow")
  if not h:
    return "-"
  kind = h.get("kind", "flow")
  steps = f"{h['steps']}->{h['steps_end']}" if h.get("steps_end", 0) > 0 else str(h["steps"])
  return f"{kind} {steps} ({h.get('solver', 'ddpm') if kind == 'flow' else 'ddpm'})"


def passes(model: dict) -> str:
  """Transformer passes per image at sampling."""
  name = model["name"]
  if name == "masked_ar":
    return str(model["num_iter"])
  if name == "scale_flow":
    return str(len(model["scales"]))
  if name == "next_x":
    return {"scale": str(len(model["scales"])), "image": "1"}.get(model["entity"], f"{model['entity']} entities")
  if name == "block_diffusion":
    return f"64/{model['block_size']} blocks"
  return "-"


def row(workdir: str) -> str:
  cfg = json.load(open(os.path.join(workdir, "config.json")))
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  last = [l for l in lines if "loss" in l][-1]
  acc = [l["judge/accuracy"] for l in lines if "judge/accuracy" in l]
  model = cfg["model"]
  variant = f" ({model['entity']})" if model["name"] == "next_x" else ""
  s = cfg["sample"]
  judged = f"{acc[-1] * 100:.1f}%" if acc else "not judged"
  return (f"| {os.path.basename(os.path.normpath(workdir))} | {model['name']}{variant} | {head_steps(model)} | "
          f"{passes(model)} | {last['step']} | {last['loss']:.4f} | {s.get('cfg_scale')} {s.get('cfg_schedule')} | "
          f"{judged} |")


def vae_psnr(workdir: str, n: int = 512) -> float:
  """Reconstruction PSNR (dB) of the trained VAE in workdir on n held-out test images."""
  from arjax import config as config_lib
  from arjax import demo, registry
  from arjax.train import checkpoint
  cfg = config_lib.load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "shapes", "vae.py"))
  model = registry.build_model(cfg)
  params = checkpoint.load_params(os.path.join(workdir, "checkpoints"), ema=True)
  images, _ = demo.real_test_set(cfg.data, n)
  return demo.tokenizer_metrics(model, params, images)["psnr_db"]


if __name__ == "__main__":
  args = sys.argv[1:]
  if args[:1] == ["--vae"]:
    print(f"VAE ({args[1]}): reconstruction PSNR {vae_psnr(args[1]):.2f} dB on 512 held-out images\n")
    args = args[2:]
  print("| run | paradigm | head steps | passes | train steps | final loss | CFG | judge class acc |")
  print("|---|---|---|---|---|---|---|---|")
  for w in args:
    print(row(w))
