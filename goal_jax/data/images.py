"""Image decoding, verification and pre-resizing for the shards.

Shards hold a JPEG whose short side is `image_short_side` (default 256, never upscaled) plus the
original (height, width), because boxes stay in original pixels. Pixels are taken as stored (no
EXIF rotation), as the PyTorch loaders of GOAL and Long-CLIP see them, so boxes mined there agree.
Every Pillow mode becomes 8-bit RGB by a stated rule (`_to_rgb`): 16-bit, 32-bit and float grey
are rescaled, not clipped to white.
"""
import io
import os
from typing import Any

import numpy as np
from PIL import Image

# Allow very large but legitimate photos (SA-1B, DOCCI), while still refusing absurd sizes.
Image.MAX_IMAGE_PIXELS = 200_000_000
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_UINT16_MAX, _INT32_MAX = 65535, 2**31 - 1


class ImageDecodeError(ValueError):
  """The image exists but cannot be decoded (corrupt, truncated, not an image)."""


def open_rgb(image: Any, *, min_short_side: int | None = None) -> Image.Image:
  """Decodes a path, encoded bytes or an HxWx3 uint8 array to a fully loaded RGB PIL image.

  Args:
    image: `str`/`os.PathLike` path, `bytes`, or a uint8 array (HxW or HxWx3).
    min_short_side: if set, JPEG decoding may use DCT scaling (`Image.draft`) down to a short
      side no smaller than this: a several-fold faster decode of big photos. The caller must
      read the original size before that (see `encode_resized`).

  Raises:
    FileNotFoundError: for a missing path.
    ImageDecodeError: for anything that does not decode.
  """
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
        image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
      raise ImageDecodeError(f"expected an HxW or HxWx3 uint8 array, got {image.dtype} "
                             f"{image.shape}")
    return Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1
                           else image).convert("RGB")
  source = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else os.fspath(image)
  try:
    with Image.open(source) as opened:
      if min_short_side and opened.format == "JPEG":
        scale = min(opened.size) / min_short_side
        opened.draft("RGB", (int(opened.size[0] / scale), int(opened.size[1] / scale)))
      return _to_rgb(opened)
  except FileNotFoundError:
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
  if isinstance(image, np.ndarray):
    return int(image.shape[0]), int(image.shape[1])
  source = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else os.fspath(image)
  try:
    with Image.open(source) as opened:
      return opened.size[1], opened.size[0]
  except FileNotFoundError:
    raise
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ImageDecodeError(f"cannot decode image {_describe(image)}: {e}") from e


def resized_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
  """(height, width) after scaling the short side to `short_side`; never upscales."""
  if not short_side or min(height, width) <= short_side:
    return height, width
  scale = short_side / min(height, width)
  if height <= width:
    return short_side, max(1, round(width * scale))
  return max(1, round(height * scale)), short_side


def encode_resized(image: Any, *, short_side: int | None = 256,
                   quality: int = 90) -> tuple[bytes, tuple[int, int]]:
  """JPEG bytes of the image with its short side at most `short_side`, and its original size.

  Returns:
    (jpeg_bytes, (original_height, original_width)).
  """
  height, width = original_size(image)
  decoded = open_rgb(image, min_short_side=short_side)
  target_h, target_w = resized_size(height, width, short_side)
  if decoded.size != (target_w, target_h):
    decoded = decoded.resize((target_w, target_h), Image.Resampling.BICUBIC)
  out = io.BytesIO()
  decoded.save(out, format="JPEG", quality=quality)
  return out.getvalue(), (height, width)


def decode(jpeg: bytes) -> np.ndarray:
  """HxWx3 uint8 array of stored image bytes."""
  return np.asarray(open_rgb(jpeg))


def _describe(image: Any) -> str:
  if isinstance(image, (bytes, bytearray)):
    return f"<{len(image)} bytes>"
  return str(image)
