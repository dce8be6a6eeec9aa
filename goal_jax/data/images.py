"""Image decoding, verification and pre-resizing for the shards.

Shards hold a JPEG whose short side is `image_short_side` (default 256, never upscaled) plus the
original (height, width), because boxes stay in original pixels. Pixels are taken as stored (no
EXIF rotation), as the PyTorch loaders of GOAL and Long-CLIP see them, so boxes mined there agree.
"""
import io
import os
from typing import Any

import numpy as np
from PIL import Image

# Allow very large but legitimate photos (SA-1B, DOCCI), while still refusing absurd sizes.
Image.MAX_IMAGE_PIXELS = 200_000_000


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
  """Loads every pixel (so truncated files fail here) and flattens any alpha onto white."""
  opened.load()
  if opened.mode in ("RGBA", "LA") or (opened.mode == "P" and "transparency" in opened.info):
    rgba = opened.convert("RGBA")
    flat = Image.new("RGB", rgba.size, (255, 255, 255))
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat
  return opened.convert("RGB")


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
