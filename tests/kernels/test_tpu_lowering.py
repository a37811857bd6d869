"""The kernels lower to Mosaic TPU MLIR on a CPU host (lowering only: not compiled, not run).

This catches ops Mosaic cannot lower (gathers, searchsorted, ...) without a TPU. Mosaic asks the
device for its TPU generation; on CPU we register a v5e description for the "cpu" device kind
through jax's internal registry (jax is pinned, see setup.py).
"""
import jax
import jax.numpy as jnp
import pytest
from jax._src.pallas.mosaic import tpu_info
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas import decode_attention, flash_attention, masks

# the kernels refuse interpret=False on a GPU backend before lowering, and the registry entry is for "cpu"
pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="lowers for TPU from a CPU host only")


@pytest.fixture(autouse=True)
def _cpu_as_tpu_v5e(monkeypatch):
  monkeypatch.setitem(tpu_info.registry, "cpu",
                      lambda: pltpu.get_tpu_info_for_chip(pltpu.ChipVersion.TPU_V5E, 1))


def _n_mosaic_calls(fn, *args):
  text = jax.jit(fn).trace(*args).lower(lowering_platforms=("tpu",)).as_text()
  return text.count("tpu_custom_call")


@pytest.mark.parametrize("mask", [masks.block_causal((1, 4, 9, 16, 25, 36, 64, 101)),
                                  masks.skip_causal(64, 2), masks.window_sink(64, 2, 1),
                                  masks.prefix(5, masks.causal())], ids=str)
def test_flash_forward_and_backward_lower_for_tpu(mask):
  q = jnp.zeros((1, 256, 4, 128), jnp.bfloat16)
  k = jnp.zeros((1, 256, 2, 128), jnp.bfloat16)
  fwd = lambda q, k, v: flash_attention(q, k, v, mask, interpret=False)
  grad = jax.grad(lambda q, k, v: fwd(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2))
  assert _n_mosaic_calls(fwd, q, k, k) == 1
  assert _n_mosaic_calls(grad, q, k, k) == 3  # forward, dq, dk/dv


def test_decode_ring_lowers_for_tpu():
  q = jnp.zeros((2, 4, 8, 128), jnp.bfloat16)
  cache = jnp.zeros((2, 2, 1024 + 128, 128), jnp.bfloat16)
  fn = lambda q, k, v, n: decode_attention(q, k, v, n, window=1024, sink=128, interpret=False)
  assert _n_mosaic_calls(fn, q, cache, cache, jnp.array([5, 5000], jnp.int32)) == 1
