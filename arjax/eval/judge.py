"""The independent `shapes` judge: a small CNN classifier for the class and the caption attributes
(shape, colour, 3x3 position) of an image; its pooled features double as the offline FID feature network.

  params = load_or_train("runs/judge.npz", colours=("red", "blue"))
  predict(params, images_BHW3)["label"]; features(params, images_BHW3) -> float32 [B,128]
Images are float in [-1,1] (the pipeline / sampler convention) or uint8 in [0,255].
Regenerate saved weights with: python scripts/train_judge.py --out PATH
"""
from __future__ import annotations

import os
import time
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from tqdm import tqdm

from arjax.data import shapes

WIDTHS = (16, 32, 64)  # features are [mean-pool, max-pool] of the last stage: 128 dims
HEADS = ("label", "shape", "colour", "position")
PREDICT_CHUNK = 512


class JudgeNet(nn.Module):
  """conv3x3-GroupNorm-ReLU stages (max-pool between) over RGB + coordinate channels, global mean+max pool, heads."""
  num_colours: int

  def features(self, x_BHW3):
    """Pooled features [B, 2*WIDTHS[-1]] (called from __call__, which owns the submodules)."""
    b, h, w, _ = x_BHW3.shape
    yy, xx = jnp.meshgrid(jnp.linspace(-1, 1, h), jnp.linspace(-1, 1, w), indexing="ij")
    coords_BHW2 = jnp.broadcast_to(jnp.stack([yy, xx], -1), (b, h, w, 2))
    x = jnp.concatenate([x_BHW3, coords_BHW2], -1)
    for i, width in enumerate(WIDTHS):
      if i:
        x = nn.max_pool(x, (2, 2), (2, 2))
      x = nn.relu(nn.GroupNorm(num_groups=8, name=f"norm_{i}")(nn.Conv(width, (3, 3), name=f"conv_{i}")(x)))
    return jnp.concatenate([jnp.mean(x, axis=(1, 2)), jnp.max(x, axis=(1, 2))], -1)

  @nn.compact
  def __call__(self, x_BHW3):
    f_BF = self.features(x_BHW3)
    sizes = dict(label=len(shapes.SHAPES) * self.num_colours, shape=len(shapes.SHAPES), colour=self.num_colours,
                 position=len(shapes.POSITIONS))
    return f_BF, {k: nn.Dense(sizes[k], name=f"head_{k}")(f_BF) for k in HEADS}


def _net(params) -> JudgeNet:
  return JudgeNet(num_colours=params["head_colour"]["kernel"].shape[-1])


def _to_float(images) -> jnp.ndarray:
  """uint8 [0,255] or float [-1,1] images -> float32 [-1,1]."""
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images of shape {images.shape}: expected [B,H,W,3]")
  return images.astype(jnp.float32) / 127.5 - 1.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)


@jax.jit
def _forward(params, x_BHW3):
  return _net(params).apply({"params": params}, x_BHW3)


def _chunked(params, images):
  """(features [B,F], logits dict) over `images` in power-of-two padded chunks (few compilations)."""
  images = np.asarray(images)
  if not len(images):
    raise ValueError(f"images of shape {images.shape}: expected a non-empty batch [B,H,W,3]")
  outs = []
  for start in range(0, len(images), PREDICT_CHUNK):
    chunk = images[start:start + PREDICT_CHUNK]
    pad = (1 << max(len(chunk) - 1, 0).bit_length()) - len(chunk)
    x = _to_float(np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)]))
    outs.append(jax.tree.map(lambda a, n=len(chunk): np.asarray(a[:n]), _forward(params, x)))
  return jax.tree.map(lambda *a: np.concatenate(a), *outs)


def predict(params, images_BHW3) -> dict:
  """Argmax predictions dict(label, shape, colour, position), each int32 [B]."""
  _, logits = _chunked(params, images_BHW3)
  return {k: v.argmax(-1).astype(np.int32) for k, v in logits.items()}


def features(params, images_BHW3) -> np.ndarray:
  """Pooled penultimate features, float32 [B,F] (the offline FID feature space)."""
  return _chunked(params, images_BHW3)[0].astype(np.float32)


def accuracy(params, images_BHW3, labels_B) -> float:
  """Fraction of images whose predicted class equals `labels_B`."""
  return float(np.mean(predict(params, images_BHW3)["label"] == np.asarray(labels_B)))


def real_data(split: str, num_examples: int, image_size: int = 32, colours=shapes.DEFAULT_COLOURS):
  """num_examples `shapes` examples of `split` as numpy: images uint8 [N,S,S,3] and a dict of int32 [N] targets."""
  src = shapes.ShapesSource(split, num_examples, image_size, colours)
  exs = [src[i] for i in range(num_examples)]
  return np.stack([e["image"] for e in exs]), {k: np.array([e[k] for e in exs], np.int32) for k in HEADS}


def _loss(params, x_BHW3, targets):
  _, logits = _net(params).apply({"params": params}, x_BHW3)
  losses = {k: optax.softmax_cross_entropy_with_integer_labels(logits[k], targets[k]).mean() for k in HEADS}
  return sum(losses.values()), losses


def train_judge(steps: int = 300, batch_size: int = 64, seed: int = 0, image_size: int = 32,
                colours=shapes.DEFAULT_COLOURS, num_train: int = 16384, lr: float = 3e-3,
                progress: bool = True) -> dict:
  """Trains the judge on real `shapes` train images (class + shape/colour/position heads); returns params."""
  colours = shapes.check_colours(colours)
  images, targets = real_data("train", min(num_train, steps * batch_size), image_size, colours)
  net = JudgeNet(num_colours=len(colours))
  rng = jax.random.PRNGKey(seed)
  params = net.init(rng, jnp.zeros((1, image_size, image_size, 3)))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, targets):
    (_, losses), grads = jax.value_and_grad(_loss, has_aux=True)(params, x, targets)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, losses

  order = np.random.default_rng(seed)
  bar = tqdm(range(steps), desc="judge", disable=not progress, dynamic_ncols=True)
  for i in bar:
    idx = order.integers(len(images), size=batch_size)
    params, opt_state, losses = step(params, opt_state, _to_float(images[idx]),
                                     {k: v[idx] for k, v in targets.items()})
    if i % 50 == 0 or i == steps - 1:
      bar.set_postfix(loss=f"{float(losses['label']):.3f}")
  return params


def save_params(path: str, params, colours=None, image_size=None) -> None:
  """Writes params (flattened 'params/<module>/<name>' keys) and optional training metadata to an .npz (no pickle)."""
  flat = {f"params/{k}": np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  if colours is not None:
    flat["meta/colours"] = np.array(shapes.check_colours(colours), dtype=np.str_)
  if image_size is not None:
    flat["meta/image_size"] = np.int32(image_size)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp.npz"
  np.savez(tmp, **flat)
  os.replace(tmp, path)


def _read(path: str):
  """(params, meta dict) from a judge .npz, validated against the JudgeNet structure."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"judge weights {path!r} not found (write them: python scripts/train_judge.py --out PATH)")
  try:
    with zipfile.ZipFile(path):  # an .npz is a zip archive; np.load would also accept a bare .npy
      pass
    with np.load(path, allow_pickle=False) as f:
      flat = {k: f[k] for k in f.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise ValueError(f"judge weights {path!r} are corrupt or not an .npz ({type(e).__name__}: {e})") from e
  params = traverse_util.unflatten_dict({k[len("params/"):]: v for k, v in flat.items() if k.startswith("params/")},
                                        sep="/")
  meta = {k[len("meta/"):]: v for k, v in flat.items() if k.startswith("meta/")}
  try:
    expected = jax.eval_shape(lambda: _net(params).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))["params"]
  except (KeyError, TypeError, IndexError) as e:
    raise ValueError(f"judge weights {path!r} do not hold JudgeNet params (no usable 'head_colour'): {e}") from e
  want = {k: v.shape for k, v in traverse_util.flatten_dict(expected, sep="/").items()}
  got = {k: v.shape for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  if want != got:
    diff = sorted(set(want.items()) ^ set(got.items()))[:6]
    raise ValueError(f"judge weights {path!r} do not match JudgeNet (widths {WIDTHS}); differing (key, shape): {diff}")
  return jax.tree.map(jnp.asarray, params), meta


def load_params(path: str) -> dict:
  """Params from an .npz written by save_params; clear errors for a missing, corrupt or mismatched file."""
  return _read(path)[0]


def load_or_train(path: str, **train_kwargs) -> dict:
  """Loads the judge from `path` if it exists, else trains it (train_judge(**train_kwargs)) and saves it there."""
  colours = shapes.check_colours(train_kwargs.get("colours", shapes.DEFAULT_COLOURS))
  image_size = int(train_kwargs.get("image_size", 32))
  if os.path.exists(path):
    params, meta = _read(path)
    saved = (tuple(str(c) for c in meta.get("colours", colours)), int(meta.get("image_size", image_size)))
    if saved != (colours, image_size) or _net(params).num_colours != len(colours):
      raise ValueError(f"judge weights {path!r} were trained for (colours, image_size)={saved}, not "
                       f"{(colours, image_size)}; delete the file or pass the matching settings")
    return params
  t0 = time.time()
  params = train_judge(**train_kwargs)
  save_params(path, params, colours, image_size)
  print(f"judge trained in {time.time() - t0:.0f}s -> {path}", flush=True)
  return params
