"""What both versions of the synthetic benchmark are made of: scene objects, shape drawing,
painting with textures and noise, and the ids of `test_hard` records.

Version 1 (`synthetic_v1`, frozen) and version 2 (`synthetic`) import this module and not each
other's, so the newer benchmark can dispatch to the older without an import cycle; a digest
test guards that version 1's records stay unchanged.
"""
import dataclasses
import re

import numpy as np
from PIL import Image, ImageDraw

NOISE_AMPLITUDE = 8  # uniform +-8 per channel on a noisy background


def shade(colour: tuple[int, int, int]) -> tuple[int, int, int]:
  """The darker second colour of a striped or checkered texture."""
  return tuple(c // 3 for c in colour)


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One shape: its attributes, its cell of the 2 x 2 layout and a jitter in cell units."""
  shape: str
  colour: str
  size: str
  texture: str
  cell: int
  jitter: tuple[float, float]

  @property
  def name(self) -> str:
    return f"{self.colour} {self.shape}"


def draw_shape(shape: str, x0: int, y0: int, side: int, image_size: int, *, square_inset: int,
               arm: int) -> np.ndarray:
  """bool `[S, S]`: `shape` drawn in the square at (x0, y0) of `side` px (both versions use it)."""
  canvas = Image.new("L", (image_size, image_size), 0)
  draw = ImageDraw.Draw(canvas)
  x1, y1, mid_x, mid_y = x0 + side - 1, y0 + side - 1, x0 + side / 2, y0 + side / 2
  if shape == "circle":
    draw.ellipse((x0, y0, x1, y1), fill=1)
  elif shape == "square":
    draw.rectangle((x0 + square_inset, y0 + square_inset, x1 - square_inset, y1 - square_inset),
                   fill=1)
  elif shape == "triangle":
    draw.polygon(((mid_x, y0), (x1, y1), (x0, y1)), fill=1)
  elif shape == "diamond":
    draw.polygon(((mid_x, y0), (x1, mid_y), (mid_x, y1), (x0, mid_y)), fill=1)
  elif shape == "cross":
    draw.rectangle((x0, round(mid_y) - arm, x1, round(mid_y) + arm), fill=1)
    draw.rectangle((round(mid_x) - arm, y0, round(mid_x) + arm, y1), fill=1)
  else:
    raise ValueError(f"unknown shape {shape!r}")
  return np.asarray(canvas, dtype=bool)


def _box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
  ys, xs = np.nonzero(mask)
  return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def paint(image_size: int, background: tuple[int, int, int], noise_seed: int | None, layers):
  """Background (+-NOISE_AMPLITUDE noise unless `noise_seed` is None), then each layer
  `(shape mask, texture mask, colour)` in order, the texture in `shade(colour)`.

  Returns (uint8 image `[S, S, 3]`, the tight box (x1, y1, x2, y2) of each layer's mask).
  """
  image = np.empty((image_size, image_size, 3), dtype=np.int16)
  image[:] = background
  if noise_seed is not None:
    noise_rng = np.random.default_rng(noise_seed)
    image += noise_rng.integers(-NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1, image.shape, dtype=np.int16)
  boxes = []
  for mask, texture, colour in layers:
    light, dark = np.array(colour, dtype=np.int16), np.array(shade(colour), dtype=np.int16)
    image[mask] = np.where(texture[mask][:, None], dark, light)
    boxes.append(_box_of(mask))
  return np.clip(image, 0, 255).astype(np.uint8), boxes


def union_box(a, b):
  """The smallest box holding boxes a and b: a relation sentence's local-pair box."""
  return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


_HARD_ID = re.compile(r"hard_g(\d+)_(\d+)(?:_([a-z]+))?$")  # test_hard, test_transfer_hard


def parse_hard_id(record_id: str) -> tuple[int, str]:
  """(group, edit) of a `test_hard` (or `test_transfer_hard`) id, raw or prepared; edit "" for the base and for v1 ids."""
  match = _HARD_ID.search(record_id)
  if match is None:
    raise ValueError(f"{record_id!r} is not a synthetic test_hard id")
  edit = match.group(3) or ""
  return int(match.group(1)), "" if edit == "base" else edit


def hard_group_of(record_id: str) -> int:
  """Group number of a `test_hard` id (`synthetic/test_hard_g00012_3_size` -> 12)."""
  return parse_hard_id(record_id)[0]
