"""Test setup: CPU, a persistent compilation cache, and f32 matmuls at full precision."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/arjax_jax_tests"))
jax.config.update("jax_default_matmul_precision", "highest")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository (configs/, scripts/)
