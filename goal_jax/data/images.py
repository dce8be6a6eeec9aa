"""Image decoding, verification and pre-resizing for the shards.

Shards hold a JPEG whose short side is `image_short_side` (default 256, never upscaled) plus the
original (height, width), because boxes stay in original pixels, and a detail copy for local
crops, cut into JPEG tiles so a crop decodes only what it covers (`encode_detail`, `crop_detail`;
why: `goal_jax.data.detail`). Pixels are taken as stored (no
EXIF rotation), as the PyTorch loaders of GOAL and Long-CLIP see them, so boxes mined there agree.
Every Pillow mode becomes 8-bit RGB by a stated rule (`_to_rgb`): 16-bit, 32-bit and float grey
are rescaled, not clipped to white.

The model's input is made here too, once: `model_image` (geometry, then OpenAI's mean/std) for
every image the pipeline and the commands feed a model, and `normalize_image_on_device`, the same
normalisation in jax.numpy for pixels sent to the device as uint8 (4x less traffic; LISM's crops).

Size limits are this module's, not Pillow's (whose `DecompressionBombWarning` would print a raw
warning at 89 MP): `open_rgb` decodes a JPEG over `max_pixels` at 1/2, 1/4 or 1/8 of its size
(DCT scaling, `Image.draft`: the memory and time of the smaller image), and refuses any other
image over it, and any JPEG over 64 times it, with `ImageTooLargeError`. The size comes from the
header, so a file that only claims to be huge (a decompression bomb) is refused before decoding.
"""
import contextlib
import dataclasses
import io
import math
import os
from typing import Any, Iterator

import jax.numpy as jnp
import numpy as np
from PIL import Image

from goal_jax.data import geometry

# The pixel limit of a decoded image (`open_rgb`, `prepare --max_image_pixels`): 100 MP holds
# every camera photo up to medium format (100-102 MP) and phones' 108 MP full-resolution mode at
# half size; decoded it is 300 MB of RGB, and preparation holds a few such copies per thread. Above
# it a JPEG is decoded at 1/2..1/8 size (a 200 MP JPEG at 1/2: 50 MP), anything else is refused.
MAX_PIXELS = 100_000_000
_MAX_REDUCTION = 8  # JPEG's DCT scaling: 1/2, 1/4, 1/8
# Pillow's own checks off: its warning is a raw line at 89 MP, its error a traceback at 179 MP.
# `open_rgb` checks `MAX_PIXELS` itself, from the header, before decoding.
Image.MAX_IMAGE_PIXELS = None
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_UINT16_MAX, _INT32_MAX = 65535, 2**31 - 1
# Side of a detail tile (`encode_detail`): a multiple of 16, JPEG's largest block, so a tile's
# blocks are the whole image's and DCT scaling by 1/2..1/8 gives whole pixels. On 1,600 x 2,000
# photos a crop of a box 0.2 of the width took 3.8 / 1.4 / 2.8 ms with 128 / 256 / 512 px tiles
# (2-core CPU), for 22 / 6 / 2 % more bytes than one JPEG: smaller tiles cost more per tile than
# they save, larger ones decode more pixels outside the box.
DETAIL_TILE = 256
# OpenAI CLIP's normalisation constants (RGB).
MEAN_RGB = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD_RGB = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
_SCALE = (1.0 / (255.0 * STD_RGB)).astype(np.float32)  # (x / 255 - mean) / std = x * scale - shift
_SHIFT = (MEAN_RGB / STD_RGB).astype(np.float32)


class ImageDecodeError(ValueError):
  """The image exists but cannot be decoded (corrupt, truncated, not an image)."""


class ImageTooLargeError(ImageDecodeError):
  """The image has more pixels than the limit and cannot be decoded at a reduced size."""


@dataclasses.dataclass(frozen=True)
class Header:
  """What an image file says about itself before decoding: its size and Pillow's format name
  (`JPEG`, `PNG`...; None for an array)."""
  height: int
  width: int
  format: str | None


def read_header(image: Any) -> Header:
  """The size and format of a path, bytes or array, reading only the header of a file."""
  if isinstance(image, np.ndarray):
    return Header(int(image.shape[0]), int(image.shape[1]), None)
  with _opened(image) as opened:
    return Header(opened.size[1], opened.size[0], opened.format)


def reduction(height: int, width: int, image_format: str | None,
              max_pixels: int | None = MAX_PIXELS) -> int:
  """The factor (1, 2, 4 or 8) `open_rgb` decodes an image at to stay within `max_pixels`.

  Raises:
    ImageTooLargeError: over the limit and not a JPEG, or a JPEG still over it at 1/8.
  """
  if not max_pixels or height * width <= max_pixels:
    return 1
  if image_format == "JPEG":
    for factor in (2, 4, _MAX_REDUCTION):
      if math.ceil(height / factor) * math.ceil(width / factor) <= max_pixels:
        return factor
  reduce = ("even at 1/8 size (JPEG's smallest decoding)" if image_format == "JPEG" else
            f"and a {image_format or 'decoded'} image cannot be decoded at a reduced size "
            "(only JPEGs can)")
  raise ImageTooLargeError(
      f"{width}x{height} pixels ({height * width / 1e6:.0f} MP) is over the "
      f"{max_pixels / 1e6:g} MP limit {reduce}: downscale it, or raise --max_image_pixels")


def open_rgb(image: Any, *, min_short_side: int | None = None,
             max_pixels: int | None = MAX_PIXELS) -> Image.Image:
  """Decodes a path, encoded bytes or an HxWx3 uint8 array to a fully loaded RGB PIL image.

  The one image decoder (shards, the pipeline, LISM, evaluation, the commands), so every Pillow
  mode becomes RGB by the same rule (`_to_rgb`) wherever an image is read.

  Args:
    image: `str`/`os.PathLike` path, `bytes`, or a uint8 array (HxW or HxWx3).
    min_short_side: if set, JPEG decoding may use DCT scaling (`Image.draft`) down to a short
      side no smaller than this: a several-fold faster decode of big photos. The caller must
      read the original size before that (see `encode_resized`).
    max_pixels: a JPEG over it is decoded at 1/2..1/8 size (`reduction`), so the result may be
      smaller than `min_short_side`; None: no limit. Arrays are taken as they are.

  Raises:
    FileNotFoundError: for a missing path.
    ImageTooLargeError: over `max_pixels` and not reducible below it (`reduction`).
    ImageDecodeError: for anything else that does not decode.
  """
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
        image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
      raise ImageDecodeError(f"expected an HxW or HxWx3 uint8 array, got {image.dtype} "
                             f"{image.shape}")
    return Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1
                           else image).convert("RGB")
  with _opened(image) as opened:
    width, height = opened.size
    try:
      factor = reduction(height, width, opened.format, max_pixels)
    except ImageTooLargeError as e:
      raise ImageTooLargeError(f"image {_describe(image)}: {e}") from None
    request = (width // factor, height // factor)  # `draft` picks the largest scale fitting it
    if min_short_side and opened.format == "JPEG":
      scale = min(opened.size) / min_short_side
      request = (min(request[0], int(width / scale)), min(request[1], int(height / scale)))
    if request != (width, height):
      opened.draft("RGB", (max(1, request[0]), max(1, request[1])))
    return _to_rgb(opened)


@contextlib.contextmanager
def _opened(image: Any) -> Iterator[Image.Image]:
  """`Image.open` of a path or bytes; any failure in the block but a missing file becomes
  `ImageDecodeError` naming the image."""
  source = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else os.fspath(image)
  try:
    with Image.open(source) as opened:
      yield opened
  except (FileNotFoundError, ImageDecodeError):
    raise
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ImageDecodeError(f"cannot decode image {_describe(image)}: {e}") from e


def _to_rgb(opened: Image.Image) -> Image.Image:
  """Loads every pixel (so truncated files fail here) and makes 8-bit RGB by a stated rule.

  Why: Pillow's `convert("RGB")` clips wider grey to 0..255, so a 16-bit PNG turned white, and
  reads float pixels as 0..255. The rules, per Pillow mode:
  - `I;16`, `I;16B`, `I;16L`, `I;16N` (16-bit grey): v * 255 / 65535, rounded (30000 -> 117).
  - `I` (32-bit signed grey; older Pillow opens 16-bit PNGs so): negatives become 0; when the
    largest value is at most 65535 the image is taken as 16-bit (as above), else as spanning the
    int32 range (v * 255 / (2**31 - 1)). So an `I` image holding only 0..255 comes out dark: no
    common format writes one.
  - `F` (32-bit float grey): [0, 1] when the largest value is at most 1 (v * 255), else 0..255;
    clipped to [0, 255] and rounded. A NaN or infinite pixel makes the image undecodable.
  - Alpha (`RGBA`, `LA`, `PA`, premultiplied `RGBa`/`La`) and a `transparency` colour (`P`, `L`,
    `RGB`, `1`, and the grey modes above): flattened onto white.
  - Anything else (`1`, `L`, `P`, `RGB`, `RGBX`, `CMYK`, `YCbCr`, `HSV`): Pillow's conversion
    (CMYK: R = (255 - C) * (255 - K) / 255, likewise G with M and B with Y).
  """
  opened.load()
  if opened.mode.startswith("I") or opened.mode == "F":
    values = np.asarray(opened)
    grey = _grey_to_uint8(values, opened.mode)
    transparent = opened.info.get("transparency")
    if isinstance(transparent, (int, float)) and not isinstance(transparent, bool):
      grey = np.where(values == transparent, np.uint8(255), grey)
    return Image.fromarray(grey, "L").convert("RGB")
  if opened.mode in _ALPHA_MODES or "transparency" in opened.info:
    rgba = opened.convert("RGBA")
    flat = Image.new("RGB", rgba.size, (255, 255, 255))
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat
  return opened.convert("RGB")


def _grey_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
  """16-bit, 32-bit integer or float grey pixels as uint8, by the rules of `_to_rgb`."""
  if mode == "F":
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
      raise ImageDecodeError("float (mode F) image with NaN or infinite pixels")
    scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    return np.rint(np.clip(values * scale, 0.0, 255.0)).astype(np.uint8)
  values = np.maximum(values, 0)
  top = _UINT16_MAX if mode != "I" or values.max(initial=0) <= _UINT16_MAX else _INT32_MAX
  values = values.astype(np.uint32 if top == _UINT16_MAX else np.int64)  # v * 255 fits
  return ((values * 255 + top // 2) // top).astype(np.uint8)  # rounded to nearest (no ties)


def original_size(image: Any) -> tuple[int, int]:
  """(height, width) of the image as stored, reading only the header when it is a file/bytes."""
  header = read_header(image)
  return header.height, header.width


def resized_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
  """(height, width) after scaling the short side to `short_side`; never upscales."""
  if not short_side or min(height, width) <= short_side:
    return height, width
  scale = short_side / min(height, width)
  if height <= width:
    return short_side, max(1, round(width * scale))
  return max(1, round(height * scale)), short_side


def encode_resized(image: Any, *, short_side: int | None = 256, quality: int = 90,
                   max_pixels: int | None = MAX_PIXELS) -> tuple[bytes, tuple[int, int]]:
  """JPEG bytes of the image with its short side at most `short_side`, and its original size.

  Returns:
    (jpeg_bytes, (original_height, original_width)).
  """
  height, width = original_size(image)
  decoded = open_rgb(image, min_short_side=short_side, max_pixels=max_pixels)
  target_h, target_w = resized_size(height, width, short_side)
  if decoded.size != (target_w, target_h):
    decoded = decoded.resize((target_w, target_h), Image.Resampling.BICUBIC)
  out = io.BytesIO()
  decoded.save(out, format="JPEG", quality=quality)
  return out.getvalue(), (height, width)


def encode_detail(image: Any, *, short_side: int | None = None,
                  stored_hw: tuple[int, int] | None = None, quality: int = 90,
                  tile: int = DETAIL_TILE,
                  max_pixels: int | None = MAX_PIXELS) -> tuple[list[bytes], np.ndarray]:
  """The detail copy of an image: JPEG tiles, and its layout `(height, width, tile side)`.

  The copy's short side is `short_side` (None or 0: the original pixels; never upscaled), so its
  aspect is the original's. It is cut into `tile x tile` JPEGs, row-major, the last row and column
  padded by repeating the edge pixels, so every tile has the same size and a crop decodes only the
  tiles it overlaps (`crop_detail`). When the copy would be no larger than the stored image
  (`stored_hw`), no tile is written and the layout is `(height, width, 0)`: the stored image
  already holds every pixel there is. A JPEG over `max_pixels` gives the copy it decodes to
  (`open_rgb`: 1/2..1/8 size), never one scaled back up.
  """
  if tile <= 0 or tile % 16:
    raise ValueError(f"the detail tile side must be a positive multiple of 16, got {tile}")
  height, width = original_size(image)
  detail_hw = resized_size(height, width, short_side or None)
  if stored_hw is not None and tuple(stored_hw) == detail_hw:
    return [], np.array([*detail_hw, 0], np.int32)
  decoded = open_rgb(image, min_short_side=short_side or None, max_pixels=max_pixels)
  if decoded.height * decoded.width < detail_hw[0] * detail_hw[1]:  # reduced by the limit
    detail_hw = (decoded.height, decoded.width)
  if decoded.size != detail_hw[::-1]:
    decoded = decoded.resize(detail_hw[::-1], Image.Resampling.BICUBIC)
  h, w = detail_hw
  rows, cols = -(-h // tile), -(-w // tile)
  tiles = []
  for r in range(rows):  # one tile's pixels at a time: no padded copy of the whole image
    for c in range(cols):
      box = (c * tile, r * tile, min((c + 1) * tile, w), min((r + 1) * tile, h))
      pixels = np.asarray(decoded.crop(box))
      if pixels.shape[:2] != (tile, tile):  # the last row or column: repeat the edge pixels
        pixels = np.pad(pixels, ((0, tile - pixels.shape[0]), (0, tile - pixels.shape[1]),
                                 (0, 0)), mode="edge")
      out = io.BytesIO()
      Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
      tiles.append(out.getvalue())
  return tiles, np.array([h, w, tile], np.int32)


def crop_detail(tiles, layout, window: tuple[int, int, int, int], *,
                min_short_side: int | None = None) -> Image.Image:
  """The pixels `window` (left, top, right, bottom, in detail pixels) of a tiled detail copy.

  Only the tiles the window overlaps are decoded. With `min_short_side`, they are decoded with
  JPEG's DCT scaling by the largest of 1/2, 1/4 and 1/8 that keeps the window's short side at
  least `min_short_side` (the model's input side): a crop much larger than the model needs costs
  a fraction of a full decode, and is never smaller than the model's input.

  Raises:
    ImageDecodeError: for a layout that does not match the tiles, or a tile that does not decode.
  """
  height, width, tile = (int(v) for v in layout)
  rows, cols = -(-height // max(tile, 1)), -(-width // max(tile, 1))
  if tile <= 0 or tile % 8 or height <= 0 or width <= 0 or len(tiles) != rows * cols:
    raise ImageDecodeError(f"detail layout {tuple(int(v) for v in layout)} does not match "
                           f"{len(tiles)} tiles")
  left, top, right, bottom = (int(v) for v in window)
  if not (0 <= left < right <= width and 0 <= top < bottom <= height):
    raise ValueError(f"window {window} is not inside the {width}x{height} detail copy")
  scale = 1
  while (min_short_side and scale < 8
         and min(right - left, bottom - top) / (2 * scale) >= min_short_side):
    scale *= 2
  part = tile // scale
  r0, r1, c0, c1 = top // tile, (bottom - 1) // tile, left // tile, (right - 1) // tile
  decoded = {(r, c): _decode_tile(tiles, r * cols + c, scale, part)
             for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)}
  if len(decoded) == 1:  # inside one tile: no canvas to fill
    canvas = decoded[r0, c0]
  else:
    canvas = Image.new("RGB", ((c1 - c0 + 1) * part, (r1 - r0 + 1) * part))
    for (r, c), pixels in decoded.items():
      canvas.paste(pixels, ((c - c0) * part, (r - r0) * part))
  x0, y0 = c0 * tile, r0 * tile
  return canvas.crop(((left - x0) // scale, (top - y0) // scale,
                      -(-(right - x0) // scale), -(-(bottom - y0) // scale)))


def _decode_tile(tiles, index: int, scale: int, part: int) -> Image.Image:
  """Tile `index` decoded at 1/`scale` (`part` pixels a side), RGB (no copy when it is)."""
  try:
    with Image.open(io.BytesIO(tiles[index])) as opened:
      if scale > 1:
        opened.draft("RGB", (part, part))
      opened.load()
      decoded = opened if opened.mode == "RGB" else opened.convert("RGB")
  except (OSError, SyntaxError, ValueError) as e:
    raise ImageDecodeError(f"detail tile {index} does not decode: {e}") from e
  if decoded.size != (part, part):
    raise ImageDecodeError(f"detail tile {index} is {decoded.size}, expected {(part, part)}")
  return decoded


def decode_detail(tiles, layout) -> Image.Image:
  """The whole detail copy as one RGB image (`layout[:2]` pixels)."""
  return crop_detail(tiles, layout, (0, 0, int(layout[1]), int(layout[0])))


def normalize_image(pixels: np.ndarray, mean=None, std=None) -> np.ndarray:
  """uint8 `[..., 3]` -> float32, OpenAI mean/std unless given (a backbone family's, of pixels
  in [0, 1]); in place on one float copy: 2x faster."""
  scale, shift = _scale_and_shift(mean, std)
  out = pixels.astype(np.float32)
  out *= scale
  out -= shift
  return out


def _scale_and_shift(mean, std) -> tuple[np.ndarray, np.ndarray]:
  """x * scale - shift = (x / 255 - mean) / std, in float32; OpenAI's unless given."""
  if mean is None and std is None:
    return _SCALE, _SHIFT
  mean = np.asarray(MEAN_RGB if mean is None else mean, np.float32)
  std = np.asarray(STD_RGB if std is None else std, np.float32)
  return (1.0 / (255.0 * std)).astype(np.float32), (mean / std).astype(np.float32)


def normalize_image_on_device(pixels: jnp.ndarray, mean=None, std=None) -> jnp.ndarray:
  """`normalize_image` of uint8 `[..., 3]` pixels in jax.numpy (jittable), bit for bit.

  A look-up of the host's values for the 256 x 3 possible inputs: XLA fuses a scale and shift
  into one multiply-add (off by an ulp), and inputs equal to the host's keep a run on device
  pixels identical to one on host-normalised ones.
  """
  table = normalize_image(np.tile(np.arange(256, dtype=np.uint8)[:, None], (1, 3)), mean, std)
  index = pixels.astype(jnp.int32) * 3 + jnp.arange(3, dtype=jnp.int32)
  return jnp.asarray(table.reshape(-1))[index]


# The batch fields that hold model images (DESIGN.md "Batch contract"); uint8 ones are pixels
# still to be normalised (`config.input.normalize_on="device"`).
IMAGE_FIELDS = ("image", "local_image")


def normalize_batch_on_device(batch: dict, mean=None, std=None) -> dict:
  """`batch` with every uint8 image field normalised (`normalize_image_on_device`); float fields
  are model inputs already. The dtype decides when tracing, so a jitted step takes either."""
  return {k: normalize_image_on_device(v, mean, std)
          if k in IMAGE_FIELDS and v.dtype == jnp.uint8 else v for k, v in batch.items()}


def model_image(image: Image.Image, image_size: int, geometry_name: str, mean=None,
                std=None) -> np.ndarray:
  """An RGB image -> the model's float32 `[S, S, 3]` input: `geometry`, then `normalize_image`
  (with a backbone family's `mean`/`std`, default CLIP's).

  Training, evaluation and the commands all make model inputs here; only the geometry differs
  (`visualize` defaults to `squash`, to show the whole image).
  """
  return normalize_image(geometry.resize_image(image, image_size, geometry_name), mean, std)


def _describe(image: Any) -> str:
  if isinstance(image, (bytes, bytearray)):
    return f"<{len(image)} bytes>"
  return str(image)
