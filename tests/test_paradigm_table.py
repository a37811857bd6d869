"""scripts/paradigm_table.py: rows from run directories (config.json, metrics.jsonl, table.json, command.txt), the
NFE of each paradigm, and which directories under a runs folder are paradigm runs."""
import importlib.util
import json
import os

import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("paradigm_table", os.path.join(ROOT, "scripts", "paradigm_table.py"))
table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table)

ACDIT = dict(name="block_diffusion", block_size=16, flow=dict(steps=25, steps_end=0, solver="heun"))
MAR = dict(name="masked_ar", num_iter=16, head=dict(kind="diffusion", steps=50, steps_end=0, solver="euler"))


def write_run(path, model, metrics, table_json=None, command=None, tokenizer=True):
  os.makedirs(path)
  cfg = dict(model=model, sample=dict(cfg_scale=2.0, cfg_schedule="linear"))
  if tokenizer:
    cfg["tokenizer"] = dict(config="/elsewhere/configs/shapes/vae.py", workdir="runs/vae")
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(cfg, f)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(m) + "\n" for m in metrics)
  if table_json is not None:
    with open(os.path.join(path, "table.json"), "w") as f:
      json.dump(table_json, f)
  if command is not None:
    with open(os.path.join(path, "command.txt"), "w") as f:
      f.write(command + "\n")


def cells(row):
  return [c.strip() for c in row.strip().strip("|").split("|")]


def test_rows_take_measured_values_then_logged_ones(tmp_path):
  write_run(tmp_path / "acdit", ACDIT, [dict(step=500, loss=0.5, steps_per_s=2.0),
                                        dict(step=1000, loss=0.4, steps_per_s=1.0)],
            dict(judge_accuracy=0.8125, fid=3.14159, sec_per_image=0.25, device="cpu", units=4), "python -m x --y")
  got = cells(table.row(str(tmp_path / "acdit")))
  assert got[0] == "ACDiT (CFG 2.0 linear)" and got[2:5] == ["81.2%", "3.14", "0.2500 (cpu)"]
  assert got[5] == "4x50 + 3" and got[6:] == ["1000", "16.7 min", "`python -m x --y`", "-"]  # heun: 2 evals/step
  write_run(tmp_path / "mar", MAR, [dict(step=1000, loss=0.3, steps_per_s=4.0), {"step": 1000, "judge/accuracy": 0.5}])
  got = cells(table.row(str(tmp_path / "mar")))
  assert got[2:5] == ["50.0%", "-", "-"] and got[5] == "16 + 16x50 head"
  assert table.nfe(dict(model=MAR, sample=dict(num_iter=64, steps=10)), None) == "64 + 64x10 head"  # overrides
  assert got[8].startswith("`python -m arjax.main --config configs/shapes/mar.py") and "runs/vae" in got[8]


def test_runs_folder_lists_paradigms_in_table_order_and_skips_tokenizers(tmp_path):
  write_run(tmp_path / "vae", dict(name="vae"), [], tokenizer=False)
  write_run(tmp_path / "a_mar", MAR, [])
  write_run(tmp_path / "b_acdit", ACDIT, [])
  write_run(tmp_path / "b_acdit_2x", ACDIT, [])  # a longer budget of b_acdit: its column, not a row
  write_run(tmp_path / "c_acdit_2x", ACDIT, [])  # no c_acdit: a row of its own
  write_run(tmp_path / "z_nt", dict(name="next_token"), [])
  names = [os.path.basename(p) for p in table.paradigm_runs(str(tmp_path))]
  assert names == ["z_nt", "a_mar", "b_acdit", "c_acdit_2x"]
  config = table.load_config(table.read_run(str(tmp_path / "a_mar"))["cfg"])
  assert config.tokenizer.config == os.path.join(ROOT, "configs", "shapes", "vae.py")  # recorded on another machine


def test_sampling_overrides_have_their_own_table_file_and_row_note(tmp_path):
  overrides = table.parse_overrides(["cfg_schedule=constant", "cfg_scale=4", "compute_dtype=float32"])
  assert overrides == {"cfg_schedule": "constant", "cfg_scale": 4, "compute_dtype": "float32"}
  assert table.table_file(overrides) == "table.cfg_schedule=constant_cfg_scale=4_compute_dtype=float32.json"
  write_run(tmp_path / "acdit", ACDIT, [dict(step=1000, loss=0.4, steps_per_s=1.0)],
            dict(judge_accuracy=0.5, fid=9.0, sec_per_image=0.5, device="cpu", units=4))
  with open(tmp_path / "acdit" / table.table_file(overrides), "w") as f:
    json.dump(dict(judge_accuracy=0.75, fid=4.0, sec_per_image=0.5, device="cpu", units=4), f)
  got = cells(table.row(str(tmp_path / "acdit"), overrides))
  assert got[0] == "ACDiT (CFG 4 constant) [compute_dtype=float32]" and got[2:4] == ["75.0%", "4.00"]
  assert cells(table.row(str(tmp_path / "acdit")))[:4] == ["ACDiT (CFG 2.0 linear)", str(tmp_path / "acdit"),
                                                           "50.0%", "9.00"]
  with pytest.raises(ValueError, match="KEY=VALUE"):
    table.parse_overrides(["cfg_scale"])


def test_longer_budgets_and_the_training_device_join_the_row(tmp_path):
  measured = lambda acc, fid: dict(judge_accuracy=acc, fid=fid, sec_per_image=0.1, device="cpu", units=4)
  write_run(tmp_path / "acdit", ACDIT, [dict(step=1000, loss=0.4, steps_per_s=2.0)], measured(0.5, 20.0))
  write_run(tmp_path / "acdit_3x", ACDIT, [], measured(0.96875, 6.5))
  write_run(tmp_path / "acdit_2x", ACDIT, [], measured(0.75, 10.0))
  write_run(tmp_path / "acdit_4x", ACDIT, [])  # not measured: left out
  write_run(tmp_path / "acdit_flow_2x", ACDIT, [], measured(0.1, 1.0))  # another run's longer budget
  with open(tmp_path / "acdit" / "run.json", "w") as f:
    json.dump(dict(device="NVIDIA H100 80GB HBM3", num_devices=1), f)
  got = cells(table.row(str(tmp_path / "acdit")))
  assert got[7] == "8.3 min (NVIDIA H100 80GB HBM3)"
  assert got[9] == "2x: 75.0% / 10.00; 3x: 96.9% / 6.50"
