"""The FID InceptionV3 in Flax: pool3 features (2048-d) and 1008-way logits, loadable from pytorch-fid's
weights file `pt_inception-2015-12-05-*.pth`.

This is the network pytorch-fid calls FIDInceptionV3 (the 2015 TensorFlow graph ported to PyTorch), which
differs from torchvision's Inception3 in its Mixed blocks: average pools exclude padding from the count
(count_include_pad=False) and the last block (Mixed_7c) uses a 3x3 stride-1 max pool in its pool branch.
Input handling follows pytorch-fid: images are resized bilinearly (half-pixel centres, no antialiasing,
like torch's F.interpolate(align_corners=False)) to 299x299 and fed in [-1, 1]; arjax images already are in
[-1, 1], so `preprocess` only resizes. The weights cannot be downloaded at run time: pass the path of a
copy of the file (read with torch.load(weights_only=True), needs the [torch] extra) or of an .npz holding
the same state_dict keys.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arjax.convert import common

INPUT_SIZE = 299
NUM_LOGITS = 1008
POOL_DIM = 2048


class BasicConv(nn.Module):
  """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU."""
  features: int
  kernel: tuple = (1, 1)
  strides: int = 1
  padding: tuple = (0, 0)

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, self.strides, padding=[(p, p) for p in self.padding],
                use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool3(x):
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool3(x, stride):
  padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, name="branch1x1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(BasicConv(48, name="branch5x5_1")(x))
    b3 = BasicConv(64, name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool3(x))
    return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = BasicConv(64, name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool3(x, 2)], -1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    b1 = BasicConv(192, name="branch1x1")(x)
    b7 = BasicConv(c, name="branch7x7_1")(x)
    b7 = BasicConv(c, **row, name="branch7x7_2")(b7)
    b7 = BasicConv(192, **col, name="branch7x7_3")(b7)
    bd = BasicConv(c, name="branch7x7dbl_1")(x)
    bd = BasicConv(c, **col, name="branch7x7dbl_2")(bd)
    bd = BasicConv(c, **row, name="branch7x7dbl_3")(bd)
    bd = BasicConv(c, **col, name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, **row, name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, name="branch_pool")(_avg_pool3(x))
    return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(BasicConv(192, name="branch3x3_1")(x))
    b7 = BasicConv(192, name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool3(x, 2)], -1)


class InceptionE(nn.Module):
  """FIDInceptionE_1 (avg pool, padding excluded) or, with max_pool, FIDInceptionE_2."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
    b1 = BasicConv(320, name="branch1x1")(x)
    b3 = BasicConv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv(384, **row, name="branch3x3_2a")(b3),
                          BasicConv(384, **col, name="branch3x3_2b")(b3)], -1)
    bd = BasicConv(448, name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv(384, **row, name="branch3x3dbl_3a")(bd),
                          BasicConv(384, **col, name="branch3x3dbl_3b")(bd)], -1)
    bp = BasicConv(192, name="branch_pool")(_max_pool3(x, 1) if self.max_pool else _avg_pool3(x))
    return jnp.concatenate([b1, b3, bd, bp], -1)


class FIDInceptionV3(nn.Module):
  """x [B, 299, 299, 3] in [-1, 1] -> dict(pool [B, 2048], logits [B, 1008])."""

  @nn.compact
  def __call__(self, x):
    x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool3(x, 2)
    x = BasicConv(80, name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool3(x, 2)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    pool = x.mean((1, 2))
    return dict(pool=pool, logits=nn.Dense(NUM_LOGITS, name="fc")(pool))


def preprocess(images_BHW3):
  """Images in [-1, 1] at any size -> [B, 299, 299, 3]: bilinear, half-pixel centres, no antialiasing."""
  b, _, _, c = images_BHW3.shape
  x = jnp.asarray(images_BHW3, jnp.float32)
  return jax.image.resize(x, (b, INPUT_SIZE, INPUT_SIZE, c), "bilinear", antialias=False)


def _flax_path(torch_key: str):
  """'Mixed_5b.branch1x1.conv.weight' -> ('params', ('Mixed_5b', 'branch1x1', 'conv', 'kernel'))."""
  *module, layer, field = torch_key.split(".")
  leaf = {("conv", "weight"): ("params", "kernel"), ("bn", "weight"): ("params", "scale"),
          ("bn", "bias"): ("params", "bias"), ("bn", "running_mean"): ("batch_stats", "mean"),
          ("bn", "running_var"): ("batch_stats", "var"), ("fc", "weight"): ("params", "kernel"),
          ("fc", "bias"): ("params", "bias")}.get((layer, field))
  return None if leaf is None else (leaf[0], (*module, layer, leaf[1]))


def _to_flax(value, field: str):
  """A torch tensor (as numpy) -> the Flax layout: conv OIHW -> HWIO, linear [out, in] -> [in, out]."""
  if field == "kernel":
    return common.conv(value) if value.ndim == 4 else common.linear(value)
  return value


def expected_variables():
  """Shapes of the Flax variables {'params': ..., 'batch_stats': ...} (no computation)."""
  shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))
  return jax.tree.map(lambda s: s.shape, shapes)


def variables_from_state_dict(state_dict: dict, source: str = "state_dict"):
  """pytorch-fid FIDInceptionV3 state_dict (name -> numpy array) -> Flax variables; checks every key/shape."""
  expected = expected_variables()
  flat_expected = {(col, *path): shape for col in expected
                   for path, shape in _flatten(expected[col]).items()}
  out, seen = {}, set()
  for key, value in state_dict.items():
    if key.endswith("num_batches_tracked"):
      continue
    target = _flax_path(key)
    if target is None or (target[0], *target[1]) not in flat_expected:
      raise ValueError(f"{source}: unexpected key {key!r}; expected the keys of pytorch-fid's FIDInceptionV3 "
                       "(e.g. 'Conv2d_1a_3x3.conv.weight', 'Mixed_7c.branch_pool.bn.running_var', 'fc.weight')")
    col, path = target
    array = _to_flax(np.asarray(value, np.float32), path[-1])
    want = flat_expected[(col, *path)]
    if array.shape != tuple(want):
      raise ValueError(f"{source}: {key!r} has shape {tuple(np.shape(value))}; expected the torch layout of "
                       f"Flax shape {tuple(want)}")
    node = out.setdefault(col, {})
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = jnp.asarray(array)
    seen.add((col, *path))
  missing = sorted(".".join(k[1:]) for k in set(flat_expected) - seen)
  if missing:
    raise ValueError(f"{source}: {len(missing)} missing weights, e.g. {missing[:3]} (Flax paths)")
  return out


def _flatten(tree, prefix=()):
  if isinstance(tree, dict):
    return {k: v for name, sub in tree.items() for k, v in _flatten(sub, prefix + (name,)).items()}
  return {prefix: tree}


def load(path: str):
  """Flax variables of the FID Inception from pytorch-fid's .pth or an .npz of the same keys (read by the
  converters' loader, arjax.convert.common.load_state_dict)."""
  try:
    state_dict = common.load_state_dict(path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{e}; pass the path of pytorch-fid's pt_inception-2015-12-05-*.pth (Inception "
                            "weights cannot be downloaded at run time)") from None
  return variables_from_state_dict(state_dict, source=path)


@jax.jit
def apply(variables, images_BHW3):
  """images [B, H, W, 3] in [-1, 1] -> dict(pool [B, 2048], logits [B, 1008])."""
  return FIDInceptionV3().apply(variables, preprocess(images_BHW3))
