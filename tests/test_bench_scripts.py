"""The baselines inside the benchmark scripts compute what they stand in for: bench_matmul.py's conv variants
(shifted products, im2col) equal XLA's SAME convolution, and bench_xla_attention.py's old 5-D attention form
equals `xla_attention` and `jax.nn.dot_product_attention` (grouped heads included); profile_sampling.py's
per-module view sums what it says it sums."""
import gzip
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from conftest import ROOT

from arjax.nn.attention import xla_attention


def script(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_conv_variants_match_xla_conv():
  bench = script("bench_matmul")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 5, 6))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 6, 4))
  want = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=bench.CONV_DN,
                                      precision=jax.lax.Precision.HIGHEST)
  for fn in (bench.conv_taps, bench.conv_im2col):
    with jax.default_matmul_precision("highest"):
      np.testing.assert_allclose(fn(x, w), want, rtol=1e-5, atol=1e-5)


def test_old_attention_form_matches_xla_attention_and_jax():
  bench = script("bench_xla_attention")
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(keys[0], (2, 5, 6, 8))
  k, v = (jax.random.normal(key, (2, 3, 7, 8)) for key in keys[1:])  # 3 kv heads, 2 query heads each
  with jax.default_matmul_precision("highest"):
    old, new = bench.old_attention(q, k, v), xla_attention(q, k, v, None)
    want = jax.nn.dot_product_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2))
  np.testing.assert_allclose(old, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(new, want, rtol=1e-5, atol=1e-5)


def test_profile_by_module_folds_layers_and_names_unlabelled_ops(tmp_path):
  """profile_sampling --by module: trace events are summed by the op_name of their HLO instruction, from the
  dumped module that covers most events; layers fold to blockN; instructions without an op_name show opcode and
  shape; runtime events are dropped and unknown ones marked."""
  prof = script("profile_sampling")
  hlo, trace = tmp_path / "hlo", tmp_path / "trace" / "plugins"
  hlo.mkdir()
  trace.mkdir(parents=True)
  meta = 'metadata={op_name="jit(jitted)/while/body/Net/blocks/block%d/mlp/gate/dot_general" stack_frame_id=1}'
  (hlo / "module_1.jit_jitted.cpu_after_optimizations.txt").write_text("\n".join([
      f"  %ynn_fusion.3 = s32[4,2048]{{1,0}} fusion(%a, %b), kind=kCustom, calls=%c, {meta % 3}",
      f"  ROOT %ynn_fusion.4 = s32[4,2048]{{1,0}} fusion(%a, %d), kind=kCustom, calls=%e, {meta % 7}",
      "  %dot.5 = f32[4,12,1,256]{3,2,1,0} dot(%q, %k), lhs_batch_dims={0,1}, lhs_contracting_dims={2}"]))
  (hlo / "module_0.jit_init.cpu_after_optimizations.txt").write_text(  # a module covering fewer events
      '  %dot.5 = f32[2]{0} dot(%x, %y), metadata={op_name="jit(init)/other"}')
  events = [dict(ph="X", name="ynn_fusion.3", dur=10), dict(ph="X", name="ynn_fusion.4", dur=30),
            dict(ph="X", name="dot.5", dur=7), dict(ph="X", name="dot.5", dur=5), dict(ph="X", name="copy.9", dur=2),
            dict(ph="X", name="ThunkExecutor::Execute", dur=100), dict(ph="i", name="ynn_fusion.3")]
  with gzip.open(trace / "host.perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  total, count = prof.op_kinds(str(tmp_path / "trace"), prof.op_names(str(hlo), str(tmp_path / "trace")))
  assert dict(total) == {"Net/blocks/blockN/mlp/gate/dot_general": 40, "dot f32[4,12,1,256]": 12,
                         "(other) copy": 2}
  assert dict(count) == {"Net/blocks/blockN/mlp/gate/dot_general": 2, "dot f32[4,12,1,256]": 2, "(other) copy": 1}
  kinds, _ = prof.op_kinds(str(tmp_path / "trace"))
  assert dict(kinds) == {"ynn_fusion": 40, "dot": 12, "copy": 2}
