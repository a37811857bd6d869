"""Test setup: CPU, a persistent compilation cache, and f32 matmuls at full precision."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/arjax_jax_tests"))
jax.config.update("jax_default_matmul_precision", "highest")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository (configs/, scripts/)


def random_params(model):
  """Initial parameters plus noise, so that zero-initialised output layers do not hide bugs."""
  params = nn.meta.unbox(jax.jit(lambda r: model.init(r, None))(jax.random.PRNGKey(0)))
  return jax.tree.map(lambda p: p + 0.2 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)


def free_port() -> int:
  """A TCP port on 127.0.0.1 that is free now (for a jax.distributed coordinator in multi-process tests)."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def needs_cpu_kernel(flag: str | None = None):
  """A pytest skip mark: the arjax/nn C++ kernels need the CPU backend, a C++ compiler ($CXX, default g++) and, if
  given, the CPU feature `flag` (e.g. 'avx512_vnni')."""
  import shutil

  import pytest

  from arjax.nn import cpu_kernels
  usable = (jax.default_backend() == "cpu" and shutil.which(os.environ.get("CXX", "g++")) is not None
            and (flag is None or flag in cpu_kernels.cpu_flags()))
  return pytest.mark.skipif(not usable, reason=f"a CPU kernel{f' for {flag}' if flag else ''}, built with a C++ "
                                               "compiler")


def random_rows(seed, m: int, k: int, n: int):
  """x f32 [m, k] (rows with spreads 0.1-3) and w f32 [k, n] (standard normal): a Dense product's operands."""
  import numpy as np
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((m, k)).astype(np.float32) * rng.uniform(0.1, 3.0, (m, 1)).astype(np.float32)
  return jax.numpy.asarray(x), jax.numpy.asarray(rng.standard_normal((k, n)), jax.numpy.float32)


def dense_layer_cases(prepare):
  """[(apply fn of the inputs, inputs, the prepared kernel, the product's dimension numbers, bias)] for an
  arjax Dense (one contracted axis) and a DenseGeneral contracting (heads, head_dim) (an output projection), their
  params passed through `prepare` (e.g. quant.quantize)."""
  from arjax.nn import layers
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4, 16))
  cases = []
  for module, inputs in [(layers.Dense(48), x.reshape(2, 5, 64)), (layers.DenseGeneral(32, axis=(-2, -1)), x)]:
    params = prepare(nn.meta.unbox(module.init(jax.random.PRNGKey(1), inputs)))
    kernel = params["params"]["kernel"]
    dn = ((tuple(range(inputs.ndim - kernel.ndim + 1, inputs.ndim)), tuple(range(kernel.ndim - 1))), ((), ()))
    cases.append((lambda x, module=module, params=params: module.apply(params, x), inputs, kernel, dn,
                  params["params"]["bias"]))
  return cases
