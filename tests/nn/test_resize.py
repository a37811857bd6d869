"""Area and bicubic resampling equal torch's F.interpolate (align_corners=False)."""
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.nn.resize import resize


@pytest.mark.parametrize("n_in,n_out", [(16, 1), (16, 5), (16, 13), (8, 3), (8, 6)])
def test_area_and_bicubic_match_torch(n_in, n_out):
  torch = pytest.importorskip("torch")
  x = np.random.RandomState(0).randn(2, n_in, n_in, 3).astype(np.float32)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2)
  area = torch.nn.functional.interpolate(xt, size=(n_out, n_out), mode="area").permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(resize(jnp.asarray(x), n_out, "area"), area, atol=1e-5)
  small = x[:, :n_out, :n_out]
  up = torch.nn.functional.interpolate(torch.from_numpy(small).permute(0, 3, 1, 2), size=(n_in, n_in),
                                       mode="bicubic").permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(resize(jnp.asarray(small), n_in, "bicubic"), up, atol=1e-5)
