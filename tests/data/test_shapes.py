"""The embedded `shapes` dataset: determinism, and labels / captions checked against the pixels by an
independent numpy reading (hue via colorsys, bounding-box centre, corner/diagonal/top-bottom coverage)."""
import colorsys

import numpy as np
import pytest

from arjax.data import shapes

FOUR = ("red", "green", "blue", "yellow")
HUES = dict(red=0, yellow=52, green=128, blue=225)  # degrees


def read_image(image):
  """(hue in degrees, 3x3 position, shape name) of the single saturated object in a uint8 image."""
  x = image.astype(np.float64)
  sat = x.max(-1) - x.min(-1)  # the background is near-grey, every shape colour is saturated
  a = np.clip((sat - sat.min()) / (np.percentile(sat, 99.5) - sat.min()), 0, 1)  # ~ coverage
  ys, xs = np.nonzero(a > 0.5)
  y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
  cy, cx, hh, hw = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2, (x1 - x0) / 2
  third = image.shape[0] / 3
  position = int(cy // third) * 3 + int(cx // third)
  hue = colorsys.rgb_to_hsv(*(x[a > 0.5].mean(0) / 255))[0] * 360
  at = lambda fy, fx: a[int(cy + fy * hh), int(cx + fx * hw)]
  corners = min(at(fy, fx) for fy in (-0.85, 0.85) for fx in (-0.85, 0.85))
  diagonal = np.mean([at(fy, fx) for fy in (-0.55, 0.55) for fx in (-0.55, 0.55)])
  top, bottom = a[y0:int(cy)].sum(), a[int(np.ceil(cy)):y1].sum()
  if top < 0.7 * bottom:
    shape = "triangle"
  elif corners > 0.15:
    shape = "square"
  else:
    shape = "circle" if diagonal > 0.5 else "cross"
  return hue, position, shape


def hue_distance(a, b):
  d = abs(a - b) % 360
  return min(d, 360 - d)


def test_deterministic_per_index_and_split():
  a, b = shapes.ShapesSource("train", 100), shapes.ShapesSource("train", 100)
  for i in (0, 7, 99):
    ea, eb = a[i], b[i]
    assert ea["image"].tobytes() == eb["image"].tobytes()
    assert ea["caption"] == eb["caption"] and ea["label"] == eb["label"]
  test, other_seed = shapes.ShapesSource("test", 100), shapes.ShapesSource("train", 100, seed=1)
  for i in range(20):
    assert not np.array_equal(a[i]["image"], test[i]["image"])
    assert not np.array_equal(a[i]["image"], other_seed[i]["image"])
  train_images = {a[i]["image"].tobytes() for i in range(100)}
  assert not train_images & {test[i]["image"].tobytes() for i in range(100)}


def test_example_format_and_label_layout():
  src = shapes.ShapesSource("train", 200, image_size=32, colours=FOUR)
  assert len(src) == 200 and len(src.class_names) == 16
  labels = []
  for i in range(200):
    e = src[i]
    assert e["image"].shape == (32, 32, 3) and e["image"].dtype == np.uint8
    assert e["label"].dtype == np.int32
    assert e["label"] == e["shape"] * 4 + e["colour"]
    shape, colour = shapes.SHAPES[e["shape"]], FOUR[e["colour"]]
    assert src.class_names[e["label"]] == f"{colour} {shape}"
    where = "in the center" if e["position"] == 4 else f"at the {shapes.POSITIONS[e['position']]}"
    assert e["caption"] == f"a {shapes.SIZES[e['size']]} {colour} {shape} {where}"
    assert len(e["caption"].encode()) <= 64
    labels.append(int(e["label"]))
  assert len(set(labels)) == 16  # every class occurs
  assert shapes.CLASS_NAMES == ["red circle", "blue circle", "red square", "blue square", "red triangle",
                                "blue triangle", "red cross", "blue cross"]


@pytest.mark.parametrize("colours", [shapes.DEFAULT_COLOURS, FOUR])
def test_colour_and_position_match_pixels(colours):
  src = shapes.ShapesSource("test", 400, image_size=32, colours=colours)
  for i in range(len(src)):
    e = src[i]
    hue, position, _ = read_image(e["image"])
    assert hue_distance(hue, HUES[colours[e["colour"]]]) < 30, (i, e["caption"], hue)
    assert position == e["position"], (i, e["caption"], position)


def test_shape_matches_pixels():
  src = shapes.ShapesSource("test", 400, image_size=64, colours=FOUR)  # 64 px: the numpy reading is unambiguous
  for i in range(len(src)):
    e = src[i]
    assert read_image(e["image"])[2] == shapes.SHAPES[e["shape"]], (i, e["caption"])


def test_sizes_and_bad_arguments():
  src = shapes.ShapesSource("train", 300)
  areas = {0: [], 1: []}
  for i in range(300):
    e = src[i]
    sat = e["image"].max(-1).astype(int) - e["image"].min(-1)
    areas[int(e["size"])].append((sat > 60).sum())
  assert np.mean(areas[1]) > 1.5 * np.mean(areas[0])
  with pytest.raises(ValueError, match="purple"):
    shapes.ShapesSource(colours=("red", "purple"))
  with pytest.raises(ValueError, match="split='val'"):
    shapes.ShapesSource("val")
  with pytest.raises(IndexError, match="out of range"):
    src[300]
