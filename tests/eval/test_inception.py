"""FID InceptionV3: the pytorch-fid state_dict layout (a random state_dict with the right keys/shapes, written
with torch.save and read by the loader) and forward parity with an independent torch-functional forward."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # the [torch] extra: pip install -e '.[torch]'

from arjax.eval import inception

F = torch.nn.functional


def _a(p, cin, pool):
  return [(f"{p}.branch1x1", 64, cin, 1, 1), (f"{p}.branch5x5_1", 48, cin, 1, 1), (f"{p}.branch5x5_2", 64, 48, 5, 5),
          (f"{p}.branch3x3dbl_1", 64, cin, 1, 1), (f"{p}.branch3x3dbl_2", 96, 64, 3, 3),
          (f"{p}.branch3x3dbl_3", 96, 96, 3, 3), (f"{p}.branch_pool", pool, cin, 1, 1)]


def _c(p, c7):
  return [(f"{p}.branch1x1", 192, 768, 1, 1), (f"{p}.branch7x7_1", c7, 768, 1, 1), (f"{p}.branch7x7_2", c7, c7, 1, 7),
          (f"{p}.branch7x7_3", 192, c7, 7, 1), (f"{p}.branch7x7dbl_1", c7, 768, 1, 1),
          (f"{p}.branch7x7dbl_2", c7, c7, 7, 1), (f"{p}.branch7x7dbl_3", c7, c7, 1, 7),
          (f"{p}.branch7x7dbl_4", c7, c7, 7, 1), (f"{p}.branch7x7dbl_5", 192, c7, 1, 7),
          (f"{p}.branch_pool", 192, 768, 1, 1)]


def _e(p, cin):
  return [(f"{p}.branch1x1", 320, cin, 1, 1), (f"{p}.branch3x3_1", 384, cin, 1, 1),
          (f"{p}.branch3x3_2a", 384, 384, 1, 3), (f"{p}.branch3x3_2b", 384, 384, 3, 1),
          (f"{p}.branch3x3dbl_1", 448, cin, 1, 1), (f"{p}.branch3x3dbl_2", 384, 448, 3, 3),
          (f"{p}.branch3x3dbl_3a", 384, 384, 1, 3), (f"{p}.branch3x3dbl_3b", 384, 384, 3, 1),
          (f"{p}.branch_pool", 192, cin, 1, 1)]


# (BasicConv2d name, out channels, in channels, kh, kw) of pytorch-fid's FIDInceptionV3 (torchvision naming).
CONVS = ([("Conv2d_1a_3x3", 32, 3, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 64, 32, 3, 3),
          ("Conv2d_3b_1x1", 80, 64, 1, 1), ("Conv2d_4a_3x3", 192, 80, 3, 3)]
         + _a("Mixed_5b", 192, 32) + _a("Mixed_5c", 256, 64) + _a("Mixed_5d", 288, 64)
         + [("Mixed_6a.branch3x3", 384, 288, 3, 3), ("Mixed_6a.branch3x3dbl_1", 64, 288, 1, 1),
            ("Mixed_6a.branch3x3dbl_2", 96, 64, 3, 3), ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3)]
         + _c("Mixed_6b", 128) + _c("Mixed_6c", 160) + _c("Mixed_6d", 160) + _c("Mixed_6e", 192)
         + [("Mixed_7a.branch3x3_1", 192, 768, 1, 1), ("Mixed_7a.branch3x3_2", 320, 192, 3, 3),
            ("Mixed_7a.branch7x7x3_1", 192, 768, 1, 1), ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
            ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1), ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3)]
         + _e("Mixed_7b", 1280) + _e("Mixed_7c", 2048))


def random_state_dict(seed=0):
  """A random FIDInceptionV3 state_dict (He-scaled convs, BN near identity) of torch tensors."""
  g = torch.Generator().manual_seed(seed)
  sd = {}
  for name, cout, cin, kh, kw in CONVS:
    sd[f"{name}.conv.weight"] = torch.randn(cout, cin, kh, kw, generator=g) * math.sqrt(2 / (cin * kh * kw))
    sd[f"{name}.bn.weight"] = 1 + 0.1 * torch.randn(cout, generator=g)
    sd[f"{name}.bn.bias"] = 0.1 * torch.randn(cout, generator=g)
    sd[f"{name}.bn.running_mean"] = 0.1 * torch.randn(cout, generator=g)
    sd[f"{name}.bn.running_var"] = 1 + 0.2 * torch.rand(cout, generator=g)
    sd[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
  sd["fc.weight"] = torch.randn(1008, 2048, generator=g) / math.sqrt(2048)
  sd["fc.bias"] = 0.1 * torch.randn(1008, generator=g)
  return sd


def torch_forward(sd, x):
  """pytorch-fid's FIDInceptionV3 forward written with torch.nn.functional on the state_dict; NCHW in [-1,1]."""
  def bc(name, x, stride=1, padding=0):
    x = F.conv2d(x, sd[f"{name}.conv.weight"], stride=stride, padding=padding)
    x = F.batch_norm(x, sd[f"{name}.bn.running_mean"], sd[f"{name}.bn.running_var"], sd[f"{name}.bn.weight"],
                     sd[f"{name}.bn.bias"], training=False, eps=0.001)
    return F.relu(x)

  avg = lambda x: F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
  cat = lambda *xs: torch.cat(xs, 1)

  def block_a(p, x):
    return cat(bc(f"{p}.branch1x1", x), bc(f"{p}.branch5x5_2", bc(f"{p}.branch5x5_1", x), padding=2),
               bc(f"{p}.branch3x3dbl_3", bc(f"{p}.branch3x3dbl_2", bc(f"{p}.branch3x3dbl_1", x), padding=1), padding=1),
               bc(f"{p}.branch_pool", avg(x)))

  def block_c(p, x):
    b7 = bc(f"{p}.branch7x7_3", bc(f"{p}.branch7x7_2", bc(f"{p}.branch7x7_1", x), padding=(0, 3)), padding=(3, 0))
    bd = bc(f"{p}.branch7x7dbl_1", x)
    for i, pad in zip(range(2, 6), [(3, 0), (0, 3), (3, 0), (0, 3)]):
      bd = bc(f"{p}.branch7x7dbl_{i}", bd, padding=pad)
    return cat(bc(f"{p}.branch1x1", x), b7, bd, bc(f"{p}.branch_pool", avg(x)))

  def block_e(p, x, pool):
    b3 = bc(f"{p}.branch3x3_1", x)
    bd = bc(f"{p}.branch3x3dbl_2", bc(f"{p}.branch3x3dbl_1", x), padding=1)
    return cat(bc(f"{p}.branch1x1", x),
               bc(f"{p}.branch3x3_2a", b3, padding=(0, 1)), bc(f"{p}.branch3x3_2b", b3, padding=(1, 0)),
               bc(f"{p}.branch3x3dbl_3a", bd, padding=(0, 1)), bc(f"{p}.branch3x3dbl_3b", bd, padding=(1, 0)),
               bc(f"{p}.branch_pool", pool(x)))

  x = bc("Conv2d_2b_3x3", bc("Conv2d_2a_3x3", bc("Conv2d_1a_3x3", x, stride=2)), padding=1)
  x = F.max_pool2d(x, 3, stride=2)
  x = F.max_pool2d(bc("Conv2d_4a_3x3", bc("Conv2d_3b_1x1", x)), 3, stride=2)
  x = block_a("Mixed_5b", x)
  x = block_a("Mixed_5c", x)
  x = block_a("Mixed_5d", x)
  bd = bc("Mixed_6a.branch3x3dbl_3", bc("Mixed_6a.branch3x3dbl_2", bc("Mixed_6a.branch3x3dbl_1", x), padding=1),
          stride=2)
  x = cat(bc("Mixed_6a.branch3x3", x, stride=2), bd, F.max_pool2d(x, 3, stride=2))
  for p in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
    x = block_c(p, x)
  b7 = bc("Mixed_7a.branch7x7x3_1", x)
  b7 = bc("Mixed_7a.branch7x7x3_3", bc("Mixed_7a.branch7x7x3_2", b7, padding=(0, 3)), padding=(3, 0))
  x = cat(bc("Mixed_7a.branch3x3_2", bc("Mixed_7a.branch3x3_1", x), stride=2),
          bc("Mixed_7a.branch7x7x3_4", b7, stride=2), F.max_pool2d(x, 3, stride=2))
  x = block_e("Mixed_7b", x, avg)
  x = block_e("Mixed_7c", x, lambda x: F.max_pool2d(x, 3, stride=1, padding=1))
  pool = x.mean((2, 3))
  return pool, F.linear(pool, sd["fc.weight"], sd["fc.bias"])


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  sd = random_state_dict()
  path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-test.pth"
  torch.save(sd, path)
  return sd, str(path)


def test_state_dict_table_matches_the_flax_model(weights_file):
  sd, path = weights_file
  variables = inception.load(path)
  assert sum(x.size for x in jax.tree.leaves(variables)) == sum(
      v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked"))
  kernel = variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]  # torch [128,128,1,7] -> HWIO
  np.testing.assert_array_equal(kernel, sd["Mixed_6b.branch7x7_2.conv.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                sd["Mixed_7c.branch_pool.bn.running_var"].numpy())
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], sd["fc.weight"].numpy().T)


def test_loader_rejects_wrong_keys_and_shapes(tmp_path, weights_file):
  sd, _ = weights_file
  bad = dict(sd, **{"Mixed_5b.branch1x1.conv.weight": torch.zeros(64, 192, 3, 3)})
  torch.save(bad, tmp_path / "shape.pth")
  with pytest.raises(ValueError, match=r"Mixed_5b.branch1x1.conv.weight.*\(64, 192, 3, 3\)"):
    inception.load(str(tmp_path / "shape.pth"))
  torch.save({k: v for k, v in sd.items() if not k.startswith("fc.")}, tmp_path / "missing.pth")
  with pytest.raises(ValueError, match="2 missing"):
    inception.load(str(tmp_path / "missing.pth"))
  torch.save(dict(sd, **{"AuxLogits.fc.weight": torch.zeros(1000, 768)}), tmp_path / "extra.pth")
  with pytest.raises(ValueError, match="AuxLogits"):
    inception.load(str(tmp_path / "extra.pth"))
  with pytest.raises(FileNotFoundError, match="pt_inception"):
    inception.load(str(tmp_path / "nope.pth"))
  np.savez(tmp_path / "weights.npz", **{k: v.numpy() for k, v in sd.items()})  # the same loader reads .npz
  jax.tree.map(np.testing.assert_array_equal, inception.load(str(tmp_path / "weights.npz")),
               inception.load(weights_file[1]))


def test_resize_matches_torch_bilinear():
  x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 24, 3)).astype(np.float32)
  ours = np.asarray(inception.preprocess(x))
  ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
                      align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_forward_matches_torch_functional_reference(weights_file):
  sd, path = weights_file
  variables = inception.load(path)
  x = np.random.default_rng(1).uniform(-1, 1, (1, 40, 40, 3)).astype(np.float32)
  out = inception.apply(variables, jnp.asarray(x))
  x299 = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
                       align_corners=False)
  with torch.no_grad():
    pool, logits = torch_forward({k: v.float() for k, v in sd.items()}, x299)
  assert out["pool"].shape == (1, 2048) and out["logits"].shape == (1, 1008)
  assert float(pool.std()) > 1e-2  # activations neither vanished nor exploded
  np.testing.assert_allclose(np.asarray(out["pool"]), pool.numpy(), rtol=2e-4, atol=2e-4 * float(pool.abs().max()))
  np.testing.assert_allclose(np.asarray(out["logits"]), logits.numpy(), rtol=2e-4,
                             atol=2e-4 * float(logits.abs().max()))
