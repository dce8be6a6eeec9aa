"""`images.open_rgb` on every Pillow mode: each file is written by Pillow, read back by us, and
compared with a pixel computed by hand from the rule in `images._to_rgb`'s docstring; the detail
copy; the model's normalisation on the host and on the device."""
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from goal_jax.data import images


def _file(image: Image.Image, fmt: str, **save) -> bytes:
  out = io.BytesIO()
  image.save(out, format=fmt, **save)
  return out.getvalue()


def _palette_image():
  image = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
  image.putpalette([255, 0, 0, 0, 0, 255])  # 0: red (made transparent), 1: blue
  return image


# (mode read back, file bytes, expected RGB pixels row by row). Expected values by hand:
#   16-bit: round(v * 255 / 65535): 30000 -> 116.73 -> 117, 65535 -> 255, 1000 -> 3.89 -> 4.
#   int32 over 65535: round(v * 255 / (2**31 - 1)): 2**30 -> 127.50000006 -> 128; negatives -> 0.
#   float <= 1: round(v * 255): 0.2 -> 51; float > 1: clip(v, 0, 255): 2.6 -> 3, 300 -> 255.
#   CMYK (0, 128, 255, 64): R = 255 * 191 / 255 = 191, G = 127 * 191 / 255 = 95.1 -> 95, B = 0.
CASES = {
    "I;16 png": ("I;16", _file(Image.fromarray(np.array([[30000, 65535, 0, 1000]], np.uint16)),
                               "PNG"), [[117, 117, 117], [255] * 3, [0] * 3, [4] * 3]),
    "I;16B tiff": ("I;16B", _file(Image.new("I;16B", (1, 1), 30000), "TIFF"), [[117] * 3]),
    "I 16-bit range": ("I", _file(Image.fromarray(np.array([[30000, -5]], np.int32)), "TIFF"),
                       [[117] * 3, [0] * 3]),
    "I 32-bit range": ("I", _file(Image.fromarray(np.array([[2**30, 2**31 - 1, 70000, -9]],
                                                           np.int32)), "TIFF"),
                       [[128] * 3, [255] * 3, [0] * 3, [0] * 3]),
    "F in [0, 1]": ("F", _file(Image.fromarray(np.array([[0.2, 1.0, 0.0]], np.float32)), "TIFF"),
                    [[51] * 3, [255] * 3, [0] * 3]),
    "F in [0, 255]": ("F", _file(Image.fromarray(np.array([[2.6, 300.0, -4.0]], np.float32)),
                                 "TIFF"), [[3] * 3, [255] * 3, [0] * 3]),
    "I;16 transparency": ("I;16", _file(Image.fromarray(np.array([[30000, 500]], np.uint16)),
                                        "PNG", transparency=500), [[117] * 3, [255] * 3]),
    "LA": ("LA", _file(Image.fromarray(np.array([[[100, 0], [100, 255]]], np.uint8), "LA"),
                       "PNG"), [[255] * 3, [100] * 3]),
    "RGBA": ("RGBA", _file(Image.fromarray(np.array([[[10, 20, 30, 0], [10, 20, 30, 255]]],
                                                    np.uint8), "RGBA"), "PNG"),
             [[255] * 3, [10, 20, 30]]),
    "P transparency": ("P", _file(_palette_image(), "PNG", transparency=0),
                       [[255, 255, 255], [0, 0, 255]]),
    "L transparency": ("L", _file(Image.fromarray(np.array([[10, 200]], np.uint8)), "PNG",
                                  transparency=10), [[255] * 3, [200] * 3]),
    "CMYK": ("CMYK", _file(Image.new("CMYK", (1, 1), (0, 128, 255, 64)), "TIFF"), [[191, 95, 0]]),
    "L": ("L", _file(Image.fromarray(np.array([[77]], np.uint8)), "PNG"), [[77] * 3]),
    "1": ("1", _file(Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1"), "PNG"),
          [[0] * 3, [255] * 3]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_open_rgb_converts_every_mode_by_its_rule(case):
  mode, data, expected = CASES[case]
  with Image.open(io.BytesIO(data)) as opened:
    assert opened.mode == mode  # the file really holds this mode
  rgb = images.open_rgb(data)
  assert rgb.mode == "RGB"
  np.testing.assert_array_equal(np.asarray(rgb), np.asarray([expected], np.uint8))


def test_partial_alpha_is_blended_onto_white():
  data = _file(Image.fromarray(np.array([[[100, 128]]], np.uint8), "LA"), "PNG")
  # 100 * 128/255 + 255 * 127/255 = 177.2 (Pillow's integer blend may round either way)
  np.testing.assert_allclose(np.asarray(images.open_rgb(data)), [[[177.2] * 3]], atol=1)


def test_float_image_with_nan_is_undecodable():
  data = _file(Image.fromarray(np.array([[0.5, np.nan]], np.float32)), "TIFF")
  with pytest.raises(images.ImageDecodeError, match="NaN"):
    images.open_rgb(data)


def test_16_bit_png_is_stored_grey_not_white(tmp_path):
  path = tmp_path / "grey16.png"
  Image.fromarray(np.full((20, 30), 30000, np.uint16)).save(path)
  jpeg, size = images.encode_resized(path, short_side=10)
  stored = np.asarray(images.open_rgb(jpeg))
  assert size == (20, 30) and stored.shape == (10, 15, 3)
  np.testing.assert_allclose(stored, 117, atol=1)  # a flat JPEG: at most 1 off after coding


def _smooth(height, width):
  """A smooth colour image (JPEG keeps it within a few levels)."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  return np.stack([128 + 100 * np.sin(x / 37), 128 + 100 * np.cos(y / 29),
                   128 + 60 * np.sin((x + y) / 53)], -1).astype(np.uint8)


def test_detail_copy_is_never_upscaled_and_keeps_the_aspect():
  pixels = _smooth(300, 200)
  tiles, layout = images.encode_detail(pixels, short_side=1024)  # larger than the image
  assert tuple(layout) == (300, 200, images.DETAIL_TILE) and len(tiles) == 2  # 2 rows x 1 col
  whole = images.decode_detail(tiles, layout)
  assert whole.size == (200, 300)
  assert np.abs(np.asarray(whole).astype(int) - pixels).mean() < 3
  tiles, layout = images.encode_detail(pixels, short_side=100)
  assert tuple(layout) == (150, 100, images.DETAIL_TILE)  # 3:2 kept
  reference = np.asarray(Image.fromarray(pixels).resize((100, 150), Image.BICUBIC)).astype(int)
  assert np.abs(np.asarray(images.decode_detail(tiles, layout)) - reference).mean() < 3
  # DOCCI-sized: 2,000 x 1,600 at short side 1,024 -> 1,280 x 1,024, 5 x 4 tiles.
  tiles, layout = images.encode_detail(np.zeros((2000, 1600, 3), np.uint8), short_side=1024)
  assert tuple(layout) == (1280, 1024, 256) and len(tiles) == 20
  # No larger than the stored image: no tiles, the stored image is the detail copy.
  assert images.encode_detail(pixels, short_side=0, stored_hw=(300, 200))[0] == []
  with pytest.raises(ValueError, match="multiple of 16"):
    images.encode_detail(pixels, tile=100)


def test_crop_detail_decodes_only_the_overlapped_tiles_at_the_scale_needed():
  pixels = _smooth(1000, 800)
  tiles, layout = images.encode_detail(pixels)  # 4 rows x 4 columns of 256 px
  whole = images.decode_detail(tiles, layout)
  window = (100, 300, 700, 900)  # 600 x 600
  np.testing.assert_array_equal(np.asarray(images.crop_detail(tiles, layout, window)),
                                np.asarray(whole.crop(window)))
  # DCT scaling: the largest of 1/2, 1/4, 1/8 keeping the short side >= the model's side.
  assert images.crop_detail(tiles, layout, window, min_short_side=224).size == (300, 300)
  assert images.crop_detail(tiles, layout, window, min_short_side=300).size == (300, 300)
  assert images.crop_detail(tiles, layout, window, min_short_side=301).size == (600, 600)
  # 1/8, widened to whole scaled pixels: floor(100 / 8) = 12 .. ceil(700 / 8) = 88.
  assert images.crop_detail(tiles, layout, window, min_short_side=60).size == (76, 76)
  halved = np.asarray(images.crop_detail(tiles, layout, window, min_short_side=224)).astype(int)
  assert np.abs(halved - np.asarray(whole.crop(window).reduce(2))).mean() < 3
  # Tiles outside the window are never decoded; one inside that does not decode is an error.
  broken = list(tiles)
  broken[0] = b"not a jpeg"  # rows 0..255, columns 0..255
  images.crop_detail(broken, layout, (300, 300, 500, 500))
  with pytest.raises(images.ImageDecodeError, match="tile 0"):
    images.crop_detail(broken, layout, (200, 200, 300, 300))
  with pytest.raises(images.ImageDecodeError, match="does not match"):
    images.crop_detail(tiles[:-1], layout, window)


# Every uint8 value in every channel, in a batch of crops as LISM sends them.
_ALL_PIXELS = np.stack([np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1)] * 2)[:, :, None]


def test_normalisation_is_openai_mean_std():
  reference = (_ALL_PIXELS / 255.0 - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array(
      [0.26862954, 0.26130258, 0.27577711])
  out = images.normalize_image(_ALL_PIXELS)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mean, std", [(None, None), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
def test_device_normalisation_equals_the_host_bit_for_bit(mean, std):
  """Every uint8 value of every channel, jitted, CLIP's and SigLIP's statistics: the device form
  is the host's (so a run on device-normalised pixels is the run on host-normalised ones; the
  scale-and-shift it replaced was fused by XLA into one multiply-add, an ulp off)."""
  got = jax.jit(lambda x: images.normalize_image_on_device(x, mean, std))(_ALL_PIXELS)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(got), images.normalize_image(_ALL_PIXELS, mean, std))


def test_a_batch_normalises_its_uint8_image_fields_only():
  pixels = _ALL_PIXELS[None]
  batch = {"image": pixels, "local_image": pixels.astype(np.float32), "text": np.zeros((1, 4))}
  out = jax.jit(images.normalize_batch_on_device)(batch)
  np.testing.assert_array_equal(np.asarray(out["image"]), images.normalize_image(pixels))
  np.testing.assert_array_equal(np.asarray(out["local_image"]), batch["local_image"])
  np.testing.assert_array_equal(np.asarray(out["text"]), batch["text"])


