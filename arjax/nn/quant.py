"""Inference precision: bf16 weights with f32 accumulation, and int8 weight-only kernels with int8 dots.

Both are chosen by the *params*, not by flags threaded through modules: `layers.Dense` / `layers.DenseGeneral`
(drop-ins for flax's, same parameter names) read their kernel and
  - f32 kernel: the plain f32 dot (training, reference sampling);
  - bf16 kernel (`cast(params, jnp.bfloat16)`): operands in bf16, accumulation and output in f32 - on CPUs with
    AMX, XLA takes the fast path only when the dot accumulates into f32 (a bf16 x bf16 -> bf16 dot is no faster
    than f32, and much slower for the skinny products of token-by-token decoding); on CPUs with AVX512F the C++
    kernel arjax.nn.cpu_bf16 (XLA:CPU without AMX converts bf16 operands element by element: slower than f32
    although half the bytes), on AMX CPUs for decoding's few rows only;
  - `Int8` kernel (`quantize(params)`): per-output-channel symmetric int8 weights; the activations are quantised
    per row on the fly (symmetric, absmax / 127) and the product is one int8 x int8 -> int32 dot, rescaled by
    (activation scale x channel scale): on CPUs with AVX512-VNNI the C++ kernel arjax.nn.cpu_int8 (XLA:CPU's int8
    dot runs at its f32 rate), elsewhere XLA's. Decoding reads a quarter of the f32 weight bytes.
    The logits projections (Dense modules named in LOGIT_HEADS) keep the compute dtype, as weight-only int8 LLM
    schemes keep their LM head: on VAR-d16 (random weights) the greedy tokens agree with f32 on 98.2% with an int8
    head and on 99.4% (the bf16 figure) with a bf16 one. `int8_head=True` quantises them too, for a model where
    that was checked and pays: LlamaGen-B, whose decoding is weight-read bound (greedy tokens 100% equal to f32,
    tokens 4.34 s instead of 4.88 s on a no-AMX Xeon, docs/inference_speed.md).

`arjax.nn.conv.Conv` reads its kernel the same way: the samplers give image decoders
`conv.for_decoding(tokenizer_params, compute_dtype)`, whose 3x3 convolutions run as row-chunked bf16 products
(bf16) or by Winograd F(4x4, 3x3) (f32 on CPU).

`Int8.scale` has the kernel's rank with size-1 axes except the last (the output channels of every Dense and of
the attention projections' head_dim axis), so the scale factors out of any contraction over the leading axes.
Rounding to nearest bounds the error of each output: |y_n - y8_n| <= (sum_k |x_k|) amax(w_:n) / 254
+ amax(x) / 254 (sum_k |w8_kn|) (tests/nn/test_quant.py checks it).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arjax.nn import cpu_bf16, cpu_int8

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LOGIT_HEADS = ("head", "lm_head")  # names of the Dense modules that produce logits: never int8
_COMPUTE = contextvars.ContextVar("arjax_compute_dtype", default=None)


@flax.struct.dataclass
class Int8:
  """Symmetric int8 values: q int8 and scale f32 broadcasting against it; w ~= q * scale. A Dense kernel:
  q [..., N], scale [1, ..., 1, N]."""
  q: jax.Array
  scale: jax.Array

  @property
  def shape(self):
    return self.q.shape

  @property
  def ndim(self):
    return self.q.ndim

  @property
  def dtype(self):
    return self.q.dtype

  def values(self):
    """The f32 values held (q * scale)."""
    return self.q.astype(jnp.float32) * self.scale


def auto_dtype() -> jnp.dtype:
  """The compute dtype 'auto' means: bfloat16 on accelerators and on CPUs with AMX; float32 on other CPUs, where
  XLA:CPU's bf16 products (AVX512-BF16 or emulated) are slower than f32 ones (VAR-d16 images 15.0 s bf16 vs 9.7 s
  f32 on an AVX512-BF16 Xeon without AMX; docs/inference_speed.md, session 11). With the bf16 Dense kernel
  (arjax.nn.cpu_bf16, session 16) bf16 is now a little faster than f32 there, and stays opt-in: f32 is the exact
  reference."""
  from arjax import host
  return jnp.dtype(jnp.bfloat16 if jax.default_backend() != "cpu" or host.has_amx() else jnp.float32)


def dtype_of(name) -> jnp.dtype:
  """'auto' | 'float32' | 'bfloat16' (or a dtype) -> the jnp dtype; anything else is an error naming the option."""
  if not isinstance(name, str):
    return jnp.dtype(name)
  if name == "auto":
    return auto_dtype()
  if name not in DTYPES:
    raise ValueError(f"sample.compute_dtype must be 'auto' or one of {sorted(DTYPES)}, got {name!r}")
  return jnp.dtype(DTYPES[name])


CACHE_DTYPES = {**DTYPES, "int8": jnp.int8}


def cache_dtype_of(name, compute_dtype) -> jnp.dtype:
  """`sample.cache_dtype` -> the KV caches' dtype. 'auto': float32 on CPU, where XLA has no fast bf16
  matrix-vector product (decoding over a 1024-token bf16 cache is 2.5x slower than over an f32 one,
  docs/inference_speed.md), else the compute dtype (half the cache bytes on TPU / GPU). 'compute': the compute
  dtype on every backend, for samplers whose units attend with many query rows at once (VAR's scales: a bf16
  cache is faster on CPU too). 'int8': per-slot, per-head symmetric int8 (a quarter of the f32 bytes), which the
  CPU decode kernel (arjax.nn.cpu_attention) reads without converting the cache; elsewhere XLA dequantises it."""
  if name == "auto":
    return jnp.dtype(jnp.float32) if jax.default_backend() == "cpu" else jnp.dtype(compute_dtype)
  if name == "compute":
    return jnp.dtype(compute_dtype)
  if name not in CACHE_DTYPES:
    raise ValueError(f"sample.cache_dtype must be 'auto', 'compute' or one of {sorted(CACHE_DTYPES)}, got {name!r}")
  return jnp.dtype(CACHE_DTYPES[name])


@contextlib.contextmanager
def compute(dtype, cache_dtype=None):
  """Within: `current()` is `dtype` and `current_cache()` is `cache_dtype` (default `dtype`); read at trace
  time, e.g. by the sampler loop to allocate KV caches."""
  token = _COMPUTE.set((jnp.dtype(dtype), jnp.dtype(cache_dtype or dtype)))
  try:
    yield
  finally:
    _COMPUTE.reset(token)


def current():
  """The compute dtype of the enclosing `compute(...)` block (None outside one)."""
  return (_COMPUTE.get() or (None, None))[0]


def current_cache():
  """The KV-cache dtype of the enclosing `compute(...)` block (None outside one)."""
  return (_COMPUTE.get() or (None, None))[1]


def symmetric(x, axes) -> Int8:
  """Symmetric int8 with one scale (absmax / 127 over `axes`, kept as size-1 axes) per slice; all-zero slices
  get scale 1."""
  x = jnp.asarray(x, jnp.float32)
  amax = jnp.max(jnp.abs(x), axis=tuple(axes), keepdims=True)
  scale = jnp.where(amax > 0, amax / 127.0, 1.0)
  return Int8(q=jnp.clip(jnp.round(x / scale), -127, 127).astype(jnp.int8), scale=scale)


def quantize_kernel(w) -> Int8:
  """Symmetric int8 with one scale per last-axis channel (absmax / 127 over every other axis)."""
  return symmetric(w, range(jnp.ndim(w) - 1))


def _is_kernel(path, leaf, min_size, head) -> bool:
  """A Dense kernel to quantise: 'kernel' of >= min_size float entries, not in a LOGIT_HEADS module unless head."""
  module, name = (getattr(k, "key", None) for k in ([None, None] + list(path))[-2:])
  return (name == "kernel" and (head or module not in LOGIT_HEADS) and getattr(leaf, "ndim", 0) >= 2
          and leaf.size >= min_size and jnp.issubdtype(leaf.dtype, jnp.floating))


def quantize(params, *, min_size: int = 4096, dtype=jnp.bfloat16, head: bool = False):
  """Every Dense kernel with >= min_size entries (but the logits heads, unless `head`) -> Int8; other float leaves
  cast to `dtype` (None keeps them).
  Idempotent: Int8 kernels are kept as they are."""

  def one(path, leaf):
    if isinstance(leaf, Int8):
      return leaf
    if _is_kernel(path, leaf, min_size, head):
      return quantize_kernel(leaf)
    return leaf if dtype is None else _cast_leaf(leaf, dtype)

  return jax.tree_util.tree_map_with_path(one, params, is_leaf=lambda x: isinstance(x, Int8))


def dequantize(params, dtype=jnp.float32):
  """Int8 kernels back to `dtype` (q * scale); other leaves unchanged."""
  return jax.tree.map(lambda x: x.values().astype(dtype) if isinstance(x, Int8) else x, params,
                      is_leaf=lambda x: isinstance(x, Int8))


def _cast_leaf(x, dtype):
  return x.astype(dtype) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else x


def cast(params, dtype):
  """Float leaves -> dtype (Int8 kernels kept)."""
  return jax.tree.map(lambda x: x if isinstance(x, Int8) else _cast_leaf(x, dtype), params,
                      is_leaf=lambda x: isinstance(x, Int8))


def for_inference(params, compute_dtype, int8: bool, int8_head: bool = False):
  """The params a sampler runs on: int8 kernels (the logits heads too with int8_head, which is ignored without int8;
  + the rest in compute_dtype), or everything in compute_dtype. Idempotent, so a caller that samples many times
  prepares them once (`params = for_inference(params, ...)`) and the sampler's own call is then free (for VAR-d16
  the per-call cast is 0.5 s of 7 s on 2 CPU cores)."""
  dtype = dtype_of(compute_dtype)
  return quantize(params, dtype=dtype, head=int8_head) if int8 else cast(params, dtype)


def weight_bytes(params) -> int:
  """Bytes the params occupy (an Int8 kernel counts its int8 values and its scales)."""
  leaves = jax.tree.leaves(params)
  return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves))


def promote_dtype(x, kernel, *rest, dtype=None, inexact=True):
  """flax's promote_dtype for (inputs, kernel, bias), except that Int8 and bf16 kernels pass through untouched
  (`dot_general` casts the inputs itself)."""
  if dtype is None and (isinstance(kernel, Int8) or kernel.dtype == jnp.bfloat16):
    return (x, kernel, *rest)
  return nn.dtypes.promote_dtype(x, kernel, *rest, dtype=dtype, inexact=inexact)


def _kernel_form(lhs, rhs, dimension_numbers) -> bool:
  """Whether the product has the CPU kernel's form: lhs contracts its trailing axes and rhs its leading ones, in
  order (every Dense and DenseGeneral)."""
  (lc, rc), _ = dimension_numbers
  n = len(lc)
  return tuple(lc) == tuple(range(lhs.ndim - n, lhs.ndim)) and tuple(rc) == tuple(range(n))


def _matrix_product(kernel, lhs, w, n: int, *args):
  """kernel(lhs [M, K], w [K, N], *args) for a product of `_kernel_form` contracting n axes, in the dot's shape."""
  k = int(np.prod(w.shape[:n]))
  y = kernel(lhs.reshape(-1, k), w.reshape(k, -1), *args)
  return y.reshape(*lhs.shape[:lhs.ndim - n], *w.shape[n:])


def int8_dot(lhs, rhs: Int8, dimension_numbers, impl: str = "auto"):
  """lhs (float) . rhs (Int8) in f32: lhs quantised per row (over its contracted axes), an int8 x int8 -> int32
  product, rescaled by the row and channel scales. impl 'xla': XLA's int8 dot; 'cpu': the AVX512-VNNI kernel
  (arjax.nn.cpu_int8; equal to the XLA form up to the float rounding of the rescale); 'auto': the kernel where
  it serves, else XLA."""
  (lc, rc), (lb, rb) = dimension_numbers
  if lb or rb:
    raise ValueError("int8 kernels take no batch dimensions")
  if any(rhs.scale.shape[a] != 1 for a in rc):
    raise ValueError(f"int8 kernel scale {rhs.scale.shape} varies along contracted axes {rc}")
  if impl not in ("auto", "xla", "cpu"):
    raise ValueError(f"int8 dot impl must be 'auto', 'xla' or 'cpu', got {impl!r}")
  free_lhs = [a for a in range(lhs.ndim) if a not in lc]
  free_rhs = [a for a in range(rhs.ndim) if a not in rc]
  form = _kernel_form(lhs, rhs, dimension_numbers)
  if impl == "cpu" and not form:
    raise ValueError(f"the CPU int8 kernel contracts lhs's trailing and rhs's leading axes, got {dimension_numbers}")
  if impl == "cpu" or (impl == "auto" and form and cpu_int8.available()):
    w_scale_N = jnp.broadcast_to(rhs.scale.reshape(rhs.scale.shape[len(rc):]), rhs.shape[len(rc):]).reshape(-1)
    return _matrix_product(cpu_int8.matmul, lhs, rhs.q, len(rc), w_scale_N)
  x = symmetric(lhs, lc)
  acc = jax.lax.dot_general(x.q, rhs.q, dimension_numbers, preferred_element_type=jnp.int32)
  x_s = x.scale.reshape([lhs.shape[a] for a in free_lhs] + [1] * len(free_rhs))
  w_s = rhs.scale.reshape([rhs.scale.shape[a] for a in free_rhs])
  return acc.astype(jnp.float32) * x_s * w_s


def _bf16_xla(lhs, rhs, dimension_numbers, precision=None):
  return jax.lax.dot_general(lhs.astype(jnp.bfloat16), rhs, dimension_numbers, precision=precision,
                             preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _bf16_kernel(lhs, rhs, n: int):
  """The CPU kernel's product contracting n axes; its gradients are the XLA form's (training in bf16 params)."""
  return _matrix_product(cpu_bf16.matmul, lhs, rhs, n)


def _bf16_kernel_fwd(lhs, rhs, n):
  return _bf16_kernel(lhs, rhs, n), (lhs, rhs)


def _bf16_kernel_bwd(n, res, g):
  lhs, rhs = res
  dn = ((tuple(range(lhs.ndim - n, lhs.ndim)), tuple(range(n))), ((), ()))
  return jax.vjp(lambda l, r: _bf16_xla(l, r, dn), lhs, rhs)[1](g)


_bf16_kernel.defvjp(_bf16_kernel_fwd, _bf16_kernel_bwd)


def bf16_dot(lhs, rhs, dimension_numbers, precision=None, impl: str = "auto"):
  """lhs . rhs (a bf16 kernel) with bf16 operands, products and sums in f32. impl 'xla': XLA's dot; 'auto': on CPU
  the AVX512 kernel (arjax.nn.cpu_bf16) where it serves products of this size and form, else XLA's. Gradients are
  the XLA form's either way."""
  (lc, rc), (lb, rb) = dimension_numbers
  if impl not in ("auto", "xla"):
    raise ValueError(f"bf16 dot impl must be 'auto' or 'xla', got {impl!r}")
  rows = int(np.prod([lhs.shape[a] for a in range(lhs.ndim) if a not in lc]))
  if impl == "auto" and not (lb or rb) and _kernel_form(lhs, rhs, dimension_numbers) and cpu_bf16.serves(rows):
    return _bf16_kernel(lhs, rhs, len(rc))
  return _bf16_xla(lhs, rhs, dimension_numbers, precision)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """lax.dot_general for Dense layers: Int8 kernels -> int8 dot; bf16 kernels -> bf16 operands, f32 result."""
  if isinstance(rhs, Int8):
    return int8_dot(lhs, rhs, dimension_numbers)
  if rhs.dtype == jnp.bfloat16:
    return bf16_dot(lhs, rhs, dimension_numbers, precision)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type)
