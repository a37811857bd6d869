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
