"""Layouts: split/merge are inverse permutations, units and masks match their definitions."""
import jax.numpy as jnp
import numpy as np
import pytest

from arjax import layout
from kernels_pallas import masks


@pytest.mark.parametrize("kind,k,sizes", [("token", 1, (1,) * 16), ("cell", 2, (4,) * 4), ("subsample", 2, (4,) * 4),
                                          ("block", 8, (8, 8)), ("image", 1, (16,))])
def test_grid_layouts_permute_the_grid(kind, k, sizes):
  lay = layout.grid_layout(kind, (4, 4), k, rope2d=True)
  assert lay.sizes == sizes and lay.length == 16
  grid = jnp.arange(2 * 16 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
  seq = lay.split(grid)
  np.testing.assert_array_equal(lay.merge(seq), grid)
  # unit u holds exactly the tokens the definition says
  rows_cols = np.asarray(lay.positions)  # (row, col) of each sequence token
  for u, (start, size) in enumerate(zip(lay.starts, lay.sizes)):
    rc = rows_cols[start:start + size]
    if kind == "cell":
      assert len({(r // k, c // k) for r, c in rc}) == 1
    if kind == "subsample":
      assert len({(r % k, c % k) for r, c in rc}) == 1
    np.testing.assert_array_equal(np.asarray(seq[0, start:start + size]),
                                  np.asarray(grid[0][rc[:, 0], rc[:, 1]]))


def test_scale_layout_split_is_area_downsampling_and_merge_is_the_last_scale():
  lay = layout.scale_layout((1, 2, 4), (4, 4), rope2d=True)
  grid = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 4, 2)), jnp.float32)
  seq = lay.split(grid)
  assert seq.shape == (1, 21, 2)
  np.testing.assert_allclose(seq[0, 0], np.asarray(grid[0]).mean((0, 1)), rtol=1e-5)
  np.testing.assert_allclose(seq[0, 1:5].reshape(2, 2, 2), np.asarray(grid[0]).reshape(2, 2, 2, 2, 2).mean((1, 3)),
                             rtol=1e-5)
  np.testing.assert_array_equal(lay.merge(seq), grid)
  # a scale's token sits at the full-grid cell it covers
  np.testing.assert_array_equal(lay.positions[1:5], [[0, 0], [0, 2], [2, 0], [2, 2]])
  with pytest.raises(ValueError, match="must increase and end at"):
    layout.scale_layout((1, 3), (4, 4))


def test_masks_and_positions_at():
  lay = layout.grid_layout("cell", (4, 4), 2)
  np.testing.assert_array_equal(lay.train_mask().dense(16, 16), masks.block_causal((4,) * 4).dense(16, 16))
  assert isinstance(layout.grid_layout("token", (2, 2)).train_mask(), masks.Causal)
  np.testing.assert_array_equal(lay.positions_at(jnp.asarray(4), 4), np.arange(4, 8))
  with pytest.raises(ValueError, match="cell size 3 must divide"):
    layout.grid_layout("cell", (4, 4), 3)
