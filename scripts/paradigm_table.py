"""The README's paradigm table on `shapes`, regenerated from run directories (one row per run).

  python scripts/paradigm_table.py --measure runs/nt runs/var runs/mar runs/acdit runs/flowar runs/xar_cell
  python scripts/paradigm_table.py --runs runs              # every paradigm run under runs/ (tokenizers skipped)
  python scripts/paradigm_table.py --vae runs/vae runs/mar  # plus the KL-VAE's reconstruction PSNR first

A run directory is what `python -m arjax.main --workdir DIR` leaves: config.json, metrics.jsonl, checkpoints/.
Columns: judge class accuracy and judge-space FID (Fréchet distance of the shapes judge's pooled features, samples vs
held-out real images), sampling time per image, NFE (network evaluations per image), training time (train steps over
the logged steps/s: compile and evals excluded; with the device from DIR/run.json) and the exact command
(DIR/command.txt, which scripts/shapes_continuous.sh writes; else rebuilt from config.json). With --measure, runs without DIR/table.json are
sampled (--num_samples images, the run's config.sample options, EMA params) and judged, and table.json is written;
without it, a run's judge accuracy is the last 'judge/accuracy' it logged and FID / sampling time are '-'.
New paradigms (TokenBridge, JPEG-LM, any-order, next-frame, ...) add a row as soon as their run directory exists.
Longer budgets: a sibling DIR_2x, DIR_3x, ... (`STEPS_MUL=2 bash scripts/shapes_continuous.sh NAME`) adds its
measured judge accuracy / FID to DIR's last column instead of a row of its own.
`--sample KEY=VALUE` (repeatable) measures and prints the runs with those sampling options (config.sample keys, or a
paradigm's own, e.g. MAR's num_iter) instead of the trained config's, kept apart in DIR/table.KEY=VALUE.json
(e.g. `--measure --sample cfg_schedule=constant runs/acdit`).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = {"next_token": "next-token", "next_scale": "VAR", "masked_ar": "MAR", "block_diffusion": "ACDiT",
         "scale_flow": "FlowAR", "next_x": "xAR", "any_order": "any-order (AS-ARM)", "jpeg_lm": "JPEG-LM",
         "next_frame": "next-frame (video)", "interleaved": "Orthus (interleaved)"}
ORDER = list(NAMES)
CONFIG_FILES = {"next_token": "next_token.py", "next_scale": "var.py", "masked_ar": "mar.py",  # configs/shapes/<file>
                "block_diffusion": "acdit.py", "scale_flow": "flowar.py", "next_x": "xar.py"}
HEADER = ("| paradigm | run | judge acc | judge FID | sampling s/img | NFE / image | train steps | train time | "
          "command | longer budgets: acc / FID |\n|---|---|---|---|---|---|---|---|---|---|")
LONGER = re.compile(r"(.+)_(\d+)x$")  # DIR_2x: DIR's config trained for 2x the steps


def read_run(workdir: str, table: str = "table.json") -> dict:
  """config.json, metrics.jsonl and (if present) the measurement `table` (kept under 'table.json'), command.txt and
  run.json (the training device) of a run directory."""
  with open(os.path.join(workdir, "config.json")) as f:
    cfg = json.load(f)
  lines = []
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = [json.loads(l) for l in f if l.strip()]
  extra = {}
  for key, name in (("table.json", table), ("command.txt", "command.txt"), ("run.json", "run.json")):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      with open(path) as f:
        extra[key] = json.load(f) if name.endswith(".json") else f.read().strip()
  return dict(cfg=cfg, metrics=lines, **extra)


def display_name(cfg: dict) -> str:
  model = cfg["model"]
  tok = os.path.basename((cfg.get("tokenizer") or {}).get("config", ""))
  if tok.startswith("dimwise"):
    return "TokenBridge"
  name = NAMES.get(model["name"], model["name"])
  if model["name"] == "next_x":
    return f"{name} ({model['entity']})"
  if model["name"] == "masked_ar":
    return f"{name} ({model['head']['kind']} head, {model.get('encoder', {}).get('pos', 'learned')} positions)"
  return name


def head_steps(h: dict) -> str:
  """A head's (or a per-entity ODE's) network evaluations per solve: Heun counts twice, DiSA annealing as a range."""
  mul = 2 if h.get("solver") == "heun" and h.get("kind", "flow") == "flow" else 1
  if h.get("steps_end", 0) > 0:
    return f"{h['steps'] * mul}->{h['steps_end'] * mul}"
  return str(h["steps"] * mul)


def nfe(cfg: dict, units) -> str:
  """Network evaluations per image. Transformer passes (one per AR unit), plus per-token head solver steps per pass
  ('head'; batched over the unit's tokens); an entity paradigm's transformer is its denoiser, so its passes are
  units x solver steps (+ one pass per entity writing it, clean, into the KV cache). CFG doubles each pass's batch,
  not the count. `units`: AR units per image (table.json), or None."""
  m, opts = cfg["model"], cfg.get("sample", {})
  solve = {k: opts[k] for k in ("steps", "steps_end", "solver") if opts.get(k) is not None}  # sampling overrides
  m = dict(m, num_iter=opts.get("num_iter") or m.get("num_iter"), **{
      part: dict(m[part], **solve) for part in ("head", "flow") if part in m})
  if m["name"] == "masked_ar":
    return f"{m['num_iter']} + {m['num_iter']}x{head_steps(m['head'])} head"
  if m["name"] == "scale_flow":
    return f"{len(m['scales'])} + {len(m['scales'])}x{head_steps(m['head'])} head"
  if units is None:
    return "-"
  if m["name"] in ("block_diffusion", "next_x"):
    return f"{units}x{head_steps(m['flow'])} + {units - 1}"
  return str(units)


def command(run: dict, workdir: str) -> str:
  if "command.txt" in run:
    return run["command.txt"]
  cfg = run["cfg"]
  file = CONFIG_FILES.get(cfg["model"]["name"], f"{cfg['model']['name']}.py")
  tok = (cfg.get("tokenizer") or {}).get("workdir")
  return (f"python -m arjax.main --config configs/shapes/{file} --workdir {workdir}"
          + (f" --config.tokenizer.workdir={tok}" if tok else "") + "  (rebuilt from config.json; overrides not shown)")


def train_time(metrics: list, device: str | None = None) -> tuple[int, str]:
  logged = [l for l in metrics if "steps_per_s" in l]
  if not logged:
    return 0, "-"
  last = logged[-1]
  return last["step"], f"{last['step'] / last['steps_per_s'] / 60:.1f} min" + (f" ({device})" if device else "")


def longer_budgets(workdir: str, table: str = "table.json") -> str:
  """'2x: 96.7% / 6.68; 3x: ...' from the measured sibling runs DIR_2x, DIR_3x, ... ('-' if none)."""
  parent, base = os.path.split(os.path.normpath(workdir))
  found = []
  for d in os.listdir(parent or "."):
    m = LONGER.fullmatch(d)
    if m and m.group(1) == base and os.path.isfile(os.path.join(parent, d, table)):
      with open(os.path.join(parent, d, table)) as f:
        t = json.load(f)
      found.append((int(m.group(2)), f"{m.group(2)}x: {t['judge_accuracy']:.1%} / {t['fid']:.2f}"))
  return "; ".join(text for _, text in sorted(found)) or "-"


def table_file(overrides: dict) -> str:
  """table.json, or table.K=V[_K2=V2].json for measurements with sampling overrides."""
  return "table" + "".join(f"{'.' if i == 0 else '_'}{k}={v}" for i, (k, v) in enumerate(overrides.items())) + ".json"


def parse_overrides(items) -> dict:
  """['cfg_scale=4', 'cfg_schedule=constant'] -> {'cfg_scale': 4, 'cfg_schedule': 'constant'}."""
  out = {}
  for item in items or ():
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--sample {item!r}: expected KEY=VALUE (a key of the config's `sample` section)")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def row(workdir: str, overrides: dict | None = None) -> str:
  run = read_run(workdir, table_file(overrides or {}))
  cfg, table = run["cfg"], run.get("table.json", {})
  if overrides:
    cfg = dict(cfg, sample=dict(cfg.get("sample", {}), **overrides))
  acc = [l["judge/accuracy"] for l in run["metrics"] if "judge/accuracy" in l]
  acc = table.get("judge_accuracy", acc[-1] if acc else None)
  steps, ttime = train_time(run["metrics"], run.get("run.json", {}).get("device"))
  fmt = lambda v, f: "-" if v is None else f.format(v)
  s = cfg.get("sample", {})
  cfg_note = f" (CFG {s['cfg_scale']} {s.get('cfg_schedule', '')})" if s.get("cfg_scale", 1.0) != 1.0 else ""
  note = cfg_note + "".join(f" [{k}={v}]" for k, v in (overrides or {}).items() if not k.startswith("cfg_"))
  cells = [display_name(cfg) + note, os.path.normpath(workdir), fmt(acc, "{:.1%}"), fmt(table.get("fid"), "{:.2f}"),
           fmt(table.get("sec_per_image"), "{:.4f}") + (f" ({table['device']})" if "device" in table else ""),
           nfe(cfg, table.get("units")), str(steps or "-"), ttime, f"`{command(run, workdir)}`",
           longer_budgets(workdir, table_file(overrides or {}))]
  return "| " + " | ".join(cells) + " |"


def load_config(cfg: dict):
  """The run's ConfigDict; a tokenizer config path recorded on another machine is looked up in configs/shapes."""
  import ml_collections
  config = ml_collections.ConfigDict(cfg)
  if "tokenizer" in config and not os.path.isfile(config.tokenizer.config.partition(":")[0]):
    path, sep, arg = config.tokenizer.config.partition(":")
    config.tokenizer.config = os.path.join(ROOT, "configs", "shapes", os.path.basename(path)) + sep + arg
  return config


def measure(workdir: str, num_samples: int, batch_size: int, overrides: dict | None = None) -> dict:
  """Samples num_samples class-conditional images (classes in turn) with the run's EMA params and sample options;
  judge accuracy, judge-space FID against as many held-out real images, seconds per image (batches after the
  first, which compiles), written to DIR/table.json (DIR/table_file(overrides) with sampling overrides)."""
  import jax
  import numpy as np
  from arjax import demo, registry
  from arjax.eval import evaluators, judge
  from arjax.train import checkpoint
  config = load_config(read_run(workdir)["cfg"])
  config.sample.update(overrides or {})  # config.sample keys or the paradigm's own options (its sampler checks them)
  model = registry.build_model(config)
  params = checkpoint.load_params(os.path.join(workdir, "checkpoints"), ema=True)
  judge_params = evaluators.build_evaluators({"judge": dict(type="judge", num_samples=num_samples)}, model, workdir,
                                             data_cfg=config.data)[0].judge_params
  images, labels, times = [], [], []
  for b in range(0, num_samples, batch_size):
    label = (np.arange(b, b + batch_size) % model.num_classes).astype(np.int32)
    t0 = time.time()
    x = np.asarray(model.sample(params, {"label": label}, jax.random.PRNGKey(b), **config.sample))
    times.append(time.time() - t0)
    images.append(x)
    labels.append(label)
  images, labels = np.concatenate(images)[:num_samples], np.concatenate(labels)[:num_samples]
  real, _ = demo.real_test_set(config.data, num_samples)
  timed = times[1:] or times
  out = dict(judge_accuracy=float(np.mean(judge.predict(judge_params, images)["label"] == labels)),
             fid=demo.fid(judge_params, images, real), sec_per_image=float(sum(timed) / (len(timed) * batch_size)),
             num_samples=num_samples, device=jax.devices()[0].device_kind, load=os.getloadavg()[0],
             units=len(model.layout.sizes) if hasattr(model, "layout") else None, sample=dict(config.sample))
  with open(os.path.join(workdir, table_file(overrides or {})), "w") as f:
    json.dump(out, f, indent=1)
  return out


def vae_psnr(workdir: str, n: int = 512) -> float:
  """Reconstruction PSNR (dB) of the trained VAE in workdir on n held-out test images."""
  from arjax import config as config_lib
  from arjax import demo, registry
  from arjax.train import checkpoint
  cfg = config_lib.load_config(os.path.join(ROOT, "configs", "shapes", "vae.py"))
  model = registry.build_model(cfg)
  params = checkpoint.load_params(os.path.join(workdir, "checkpoints"), ema=True)
  images, _ = demo.real_test_set(cfg.data, n)
  return demo.tokenizer_metrics(model, params, images)["psnr_db"]


def paradigm_runs(root: str) -> list:
  """Run directories under root whose model is a paradigm, in table order; DIR_2x, ... only where DIR is absent
  (else they are DIR's longer-budget column)."""
  found = []
  names = set(os.listdir(root))
  for d in sorted(names):
    m = LONGER.fullmatch(d)
    if m and m.group(1) in names:
      continue
    path = os.path.join(root, d, "config.json")
    if os.path.isfile(path):
      with open(path) as f:
        cfg = json.load(f)
      if "tokenizer" in cfg:  # tokenizers (vq, vae, msvq, ...) have none
        name = cfg["model"]["name"]
        found.append((ORDER.index(name) if name in ORDER else len(ORDER), d, os.path.join(root, d)))
  return [p for _, _, p in sorted(found)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="*")
  parser.add_argument("--runs", help="add every paradigm run directory under this folder")
  parser.add_argument("--measure", action="store_true", help="sample + judge runs without table.json")
  parser.add_argument("--remeasure", action="store_true", help="sample + judge every run, overwriting table.json")
  parser.add_argument("--num_samples", type=int, default=512)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--vae", help="print this KL-VAE run's reconstruction PSNR first")
  parser.add_argument("--sample", action="append", metavar="KEY=VALUE",
                      help="sampling override (repeatable): measured into DIR/table.KEY=VALUE.json")
  args = parser.parse_args()
  overrides = parse_overrides(args.sample)
  name = table_file(overrides)
  workdirs = list(args.workdirs) + (paradigm_runs(args.runs) if args.runs else [])
  if args.vae:
    print(f"VAE ({args.vae}): reconstruction PSNR {vae_psnr(args.vae):.2f} dB on 512 held-out images\n")
  for w in workdirs:
    if args.remeasure or (args.measure and not os.path.exists(os.path.join(w, name))):
      if not os.path.isdir(os.path.join(w, "checkpoints")):
        print(f"{w}: no checkpoints, not measured")
        continue
      print(f"{w}: {measure(w, args.num_samples, args.batch_size, overrides)}", flush=True)
  print(HEADER)
  for w in workdirs:
    print(row(w, overrides))


if __name__ == "__main__":
  main()
