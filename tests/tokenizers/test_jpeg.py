"""arjax.tokenizers.jpeg against Pillow's own full-stream JPEG (the reference), and its input checks."""
import io

import numpy as np
import pytest
from PIL import Image

from arjax.data import shapes
from arjax.tokenizers import jpeg


def _images():
  src = shapes.ShapesSource("train", 4, 32)
  rng = np.random.default_rng(0)
  return ([src[i]["image"] for i in range(3)] + [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                                                rng.integers(0, 256, (24, 40, 3), dtype=np.uint8),
                                                rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)])


def _pillow_full(image, quality):
  out = io.BytesIO()
  Image.fromarray(image).save(out, "JPEG", quality=quality, subsampling="4:2:0", restart_marker_blocks=1)
  return out.getvalue()


@pytest.mark.parametrize("quality", [25, 80])
def test_to_file_is_pillows_full_stream(quality):
  for image in _images():
    tokens = jpeg.encode(image, quality)
    full = _pillow_full(image, quality)
    assert tokens.dtype == np.uint8 and len(tokens) < len(full)  # the tables are left out
    assert jpeg.to_file(tokens, quality) == full
    with Image.open(io.BytesIO(full)) as im:
      np.testing.assert_array_equal(jpeg.decode(tokens, quality), np.asarray(im.convert("RGB")))


def test_encoding_is_deterministic_and_shares_one_header():
  images = _images()[:4]
  assert all(np.array_equal(jpeg.encode(x), jpeg.encode(x.copy())) for x in images)
  headers = {bytes(b"".join(s for _, s in jpeg.segments(jpeg.encode(x).tobytes()))) for x in images}
  assert len(headers) == 1  # every 32x32 file starts with the same bytes
  markers = [m for m, _ in jpeg.segments(headers.pop())]
  assert markers == [0xD8, 0xE0, 0xC0, 0xDD, 0xDA]  # SOI APP0 SOF0 DRI SOS: no DQT / DHT


def test_restart_markers_separate_every_mcu():
  for image in _images():
    data = jpeg.encode(image)
    n_mcu = -(-image.shape[0] // 16) * -(-image.shape[1] // 16)  # 4:2:0: 16x16 pixels per MCU
    # inside entropy-coded data 0xFF is always followed by a stuffed 0x00, so FF Dx pairs are exactly the markers
    rst = [int(b) for a, b in zip(data[:-1], data[1:]) if a == 0xFF and 0xD0 <= b <= 0xD7]
    assert rst == [0xD0 + m % 8 for m in range(n_mcu - 1)]  # one between each two consecutive MCUs, D0..D7 cyclic
    assert data[-2:].tolist() == [0xFF, 0xD9]


@pytest.mark.parametrize("image, match", [
    (np.zeros((32, 32, 3), np.float32), "uint8"), (np.zeros((32, 32), np.uint8), r"\[H, W, 3\]"),
    (np.zeros((32, 32, 4), np.uint8), r"\[H, W, 3\]"), (np.zeros((0, 32, 3), np.uint8), r"\[H, W, 3\]")])
def test_encode_rejects_bad_images(image, match):
  with pytest.raises(ValueError, match=match):
    jpeg.encode(image)


@pytest.mark.parametrize("quality", [0, 96, -5, 25.0, True, "25"])
def test_quality_outside_1_95_is_an_error(quality):
  image = np.zeros((16, 16, 3), np.uint8)
  for fn, arg in ((jpeg.encode, image), (jpeg.to_file, jpeg.encode(image)), (jpeg.decode, jpeg.encode(image))):
    with pytest.raises(ValueError, match="quality must be an int in"):
      fn(arg, quality=quality)


def test_bad_tokens_are_errors():
  with pytest.raises(ValueError, match="byte values"):
    jpeg.to_file(np.array([0, 300]))
  with pytest.raises(ValueError, match="SOI"):
    jpeg.to_file(np.array([1, 2, 3], np.uint8))
  with pytest.raises(ValueError, match="baseline header"):
    jpeg.to_file(np.array([0xFF, 0xD8, 0xFF, 0xD9], np.uint8))
