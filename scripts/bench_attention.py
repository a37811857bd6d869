"""Block-sparse flash attention vs. XLA dense-masked attention on three AR layouts.

  python scripts/bench_attention.py                       # small CPU run (interpret mode)
  python scripts/bench_attention.py --batch 8 --heads 16 --head_dim 64 --backward   # on TPU

Prints, per layout, the fraction of (block_q x block_k) tiles the kernel computes versus a dense
kernel (non-empty / all, and how many of those need the mask), then the time of the kernel and of
XLA dense-masked attention (jax.nn.dot_product_attention with the dense bool mask), measured side
by side in this run, and their ratio. On CPU the kernel runs in Pallas interpret mode: those times
measure the interpreter, not the kernel, and are labelled so.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas import flash_attention, masks

VAR_D16_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def layouts():
  """name -> (mask, length): VAR-d16 scales, LongLive window + sink, ACDiT skip-causal."""
  return {
      "VAR-d16 scales (block_causal, L=680)":
          (masks.block_causal([p * p for p in VAR_D16_PATCH_NUMS]), 680),
      "LongLive-like (window_sink: 16 frames x 64, window 4, sink 1)":
          (masks.window_sink(64, 4, 1), 16 * 64),
      "ACDiT SCAM (skip_causal: 8 blocks x 64, clean+noised)":
          (masks.skip_causal(64, 8), 2 * 8 * 64),
  }


def median_time(fn, args, iters):
  """Median wall seconds of fn(*args) over iters runs, after one compile/warm-up run."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def print_tiles(mask, length, block):
  """Prints the fraction of tiles the kernel computes versus a dense kernel."""
  table = mask.block_table(length, length, block, block)
  n_tiles = table.size
  computed, partial = int((table > 0).sum()), int((table == masks.PARTIAL).sum())
  density = float(mask.dense(length, length).mean())
  print(f"  tiles computed {computed}/{n_tiles} = {computed / n_tiles:.3f} of dense "
        f"({partial} partial, {computed - partial} full); visible entries {density:.3f}")


def time_layout(mask, length, args):
  """Prints kernel and XLA dense-masked times for one layout, measured side by side."""
  dtype = jnp.dtype(args.dtype)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(kk, (args.batch, length, args.heads, args.head_dim), dtype)
             for kk in keys)
  dense_11LL = jnp.asarray(mask.dense(length, length))[None, None]
  kernel = lambda q, k, v: flash_attention(q, k, v, mask, block_q=args.block, block_k=args.block)
  xla = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=dense_11LL, implementation="xla")
  runs = [("forward", kernel, xla)]
  if args.backward:
    grad = lambda f: jax.grad(lambda q, k, v: f(q, k, v).astype(jnp.float32).sum(), (0, 1, 2))
    runs.append(("fwd+bwd", grad(kernel), grad(xla)))
  for name, kfn, xfn in runs:
    t_kernel = median_time(jax.jit(kfn), (q, k, v), args.iters)
    t_xla = median_time(jax.jit(xfn), (q, k, v), args.iters)
    print(f"  {name:8s} kernel {t_kernel * 1e3:9.2f} ms   xla dense-masked {t_xla * 1e3:9.2f} ms"
          f"   kernel/xla = {t_kernel / t_xla:.2f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=2)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--block", type=int, default=128)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--backward", action="store_true", help="also time forward + backward")
  args = parser.parse_args()

  backend = jax.default_backend()
  print(f"backend {backend} ({jax.devices()[0].device_kind}), batch {args.batch}, heads "
        f"{args.heads}, head_dim {args.head_dim}, block {args.block}, {args.dtype}")
  if backend == "cpu":
    print("NOTE: CPU runs the kernel in Pallas interpret mode; its times measure the interpreter, "
          "not a kernel, and are not a meaningful speed comparison.")
  if backend == "gpu":
    print("NOTE: the kernels have no GPU lowering (Mosaic TPU only); on GPU use the XLA/cuDNN "
          "path. This run only reports tile fractions.")
  for name, (mask, length) in layouts().items():
    print(name)
    print_tiles(mask, length, args.block)
    if backend != "gpu":
      time_layout(mask, length, args)


if __name__ == "__main__":
  main()
