"""`synthetic` version 1, frozen: `prepare synthetic --version=1` (or `read_examples(version=1)`).

Kept unchanged so earlier results stay reproducible. It could not show what local alignment is
for, which is why version 2 (`goal_jax/data/synthetic.py`) replaced it: at the demo model's 64 px
input its shapes and textures were not visible (a shape edit moved the image embedding by ~1 % of
the distance between unrelated scenes), the colour set and layout alone told 98 % of a batch's
captions apart, and a local sentence stated a position and size its resized crop could not show.
What follows is its original description.

Procedural shape scenes with long captions and ground-truth local pairs.

Why it exists: the demo and the tests need a long-caption dataset that ships with the code, trains a
tiny model on a laptop CPU in minutes, and still asks the question GOAL and MulCLIP are about: does
the model align the *details* of a long caption with the *regions* of the image?

What an example is: a 96 px image with 3-5 shapes (circle, square, triangle, diamond, cross), each
with a colour, a size, a texture (solid, striped, dotted, checkered) and a place in a 3 x 3 layout,
on a plain or noisy background. The long caption is

  <summary> <one sentence per shape> <1-2 relation sentences>
  "Four shapes on a noisy grey background. A small red striped circle is in the top left corner.
   ... The red circle is left of the blue square."

The summary says only the count and background, so 18 summaries are shared by thousands of
images: the gist never identifies an image, only the details do. Each shape sentence carries the
ground-truth box of its shape (original pixels) as a `LocalPair` with score 1.0, and each relation
sentence the union of its two boxes with score 0.5, so GOAL's TSL (which uses the best pair) runs
on a shape without LISM/SAM.

What it measures:
- `test`: long-caption retrieval among fresh scenes (same distribution as `train`).
- `test_hard`: groups of 4 images that share background, layout, noise and every shape but one; each
  variant changes ONE attribute (colour, shape, size or texture) of ONE shape of the group's base
  image. Captions in a group have the same summary and differ in one or two words, so ranking an
  image's caption among its group's 4 (`hard_group_of`) is at chance (1/4) for a model that keeps
  only the gist. It takes registering one small change among 3-5 shapes x 4 attributes, and often
  binding: in 21% of the within-group pairs the sets of attribute values present are identical
  (measured on 200 groups), so only which shape has which value tells the two apart. Details and
  binding are what local (region-sentence, token-level) alignment is meant to train.

Everything is deterministic: example `i` of a split is a function of `(seed, split, i)` alone, so
the reader is random-access and reproducible without storing anything.
"""
import dataclasses
import math
from typing import Iterator

import numpy as np

from goal_jax.data import synthetic_parts as shared  # the digest test guards v1
from goal_jax.data.records import LocalPair, RawExample

SPLITS = ("train", "test", "test_hard")
SPLIT_SIZES = {"train": 3000, "test": 300, "test_hard": 300}
IMAGE_SIZE = 96
HARD_GROUP_SIZE = 4
MIN_OBJECTS, MAX_OBJECTS = 3, 5
MAX_RELATIONS = 2

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 230), "yellow": (235, 210, 40),
    "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (245, 245, 245),
}
SIZES = {"small": 0.45, "large": 0.8}  # side as a fraction of a layout cell
TEXTURES = ("solid", "striped", "dotted", "checkered")
BACKGROUNDS = {"grey": (140, 140, 140), "black": (20, 20, 20), "brown": (120, 85, 55)}
NOISE_AMPLITUDE = 8  # uniform +-8 per channel on a noisy background
ATTRIBUTES = ("colour", "shape", "size", "texture")
_ATTRIBUTE_VALUES = {"colour": tuple(COLOURS), "shape": SHAPES, "size": tuple(SIZES),
                     "texture": TEXTURES}
_GRID = 3
_PLACES = (("in the top left corner", "at the top", "in the top right corner"),
           ("on the left", "in the centre", "on the right"),
           ("in the bottom left corner", "at the bottom", "in the bottom right corner"))
_COUNTS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}


shade = shared.shade


SceneObject = shared.SceneObject  # shape, colour, size, texture, cell, jitter


@dataclasses.dataclass(frozen=True)
class Scene:
  background: str
  noisy: bool
  objects: tuple[SceneObject, ...]
  relations: tuple[tuple[int, int], ...]  # pairs of object indices
  noise_seed: int


def _sample_object_attributes(rng: np.random.Generator, taken: set[tuple[str, str]]):
  """Samples (shape, colour) not yet in the scene, so "the red circle" always names one shape."""
  while True:
    shape, colour = SHAPES[rng.integers(len(SHAPES))], tuple(COLOURS)[rng.integers(len(COLOURS))]
    if (colour, shape) not in taken:
      return shape, colour


def sample_scene(rng: np.random.Generator) -> Scene:
  """A random scene: 3-5 shapes in distinct cells, 1-2 relations, a background."""
  count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
  cells = rng.permutation(_GRID * _GRID)[:count]
  taken, objects = set(), []
  for cell in cells:
    shape, colour = _sample_object_attributes(rng, taken)
    taken.add((colour, shape))
    objects.append(SceneObject(
        shape=shape, colour=colour, size=tuple(SIZES)[rng.integers(len(SIZES))],
        texture=TEXTURES[rng.integers(len(TEXTURES))], cell=int(cell),
        jitter=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)))))
  pairs = [(i, j) for i in range(count) for j in range(count) if i != j]
  num_relations = int(rng.integers(1, MAX_RELATIONS + 1))
  relations = tuple(pairs[k] for k in rng.choice(len(pairs), num_relations, replace=False))
  return Scene(background=tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
               noisy=bool(rng.integers(2)), objects=tuple(objects), relations=relations,
               noise_seed=int(rng.integers(2**31)))


def change_one_attribute(scene: Scene, rng: np.random.Generator, object_index: int,
                         attribute: str) -> Scene:
  """The scene with one attribute of one object set to another value (names stay unique)."""
  obj = scene.objects[object_index]
  others = {o.name for k, o in enumerate(scene.objects) if k != object_index}
  choices = []
  for value in _ATTRIBUTE_VALUES[attribute]:
    changed = dataclasses.replace(obj, **{attribute: value})
    if value != getattr(obj, attribute) and changed.name not in others:
      choices.append(changed)
  if not choices:
    raise ValueError(f"no free value for {attribute} of object {object_index} in {scene}")
  objects = list(scene.objects)
  objects[object_index] = choices[rng.integers(len(choices))]
  return dataclasses.replace(scene, objects=tuple(objects))


def _object_square(obj: SceneObject, image_size: int) -> tuple[int, int, int]:
  """Top-left corner and side of the square the shape is drawn in, inside its cell."""
  cell = image_size / _GRID
  side = max(4, int(round(SIZES[obj.size] * cell)))
  slack = (cell - side) / 2 * 0.8  # keeps the shape inside its cell, so shapes never overlap
  row, col = divmod(obj.cell, _GRID)
  cx = (col + 0.5) * cell + obj.jitter[0] * slack
  cy = (row + 0.5) * cell + obj.jitter[1] * slack
  return int(round(cx - side / 2)), int(round(cy - side / 2)), side


def _shape_mask(obj: SceneObject, image_size: int) -> np.ndarray:
  x0, y0, side = _object_square(obj, image_size)
  return shared.draw_shape(obj.shape, x0, y0, side, image_size, square_inset=side // 10,
                           arm=max(1, side // 6))


def _texture(obj: SceneObject, image_size: int) -> np.ndarray:
  """bool `[H, W]`: True where the texture uses the darker shade (phase fixed to the shape)."""
  x0, y0, _ = _object_square(obj, image_size)
  v, u = np.mgrid[0:image_size, 0:image_size]
  u, v = u - x0, v - y0
  if obj.texture == "solid":
    return np.zeros((image_size, image_size), dtype=bool)
  if obj.texture == "striped":
    return ((u + v) // 3) % 2 == 1
  if obj.texture == "dotted":
    return (u % 5 >= 3) & (v % 5 >= 3)
  if obj.texture == "checkered":
    return ((u // 4) + (v // 4)) % 2 == 1
  raise ValueError(f"unknown texture {obj.texture!r}")


def render(scene: Scene, image_size: int = IMAGE_SIZE):
  """Draws a scene; returns (uint8 image `[S, S, 3]`, the box (x1, y1, x2, y2) of each object)."""
  return shared.paint(image_size, BACKGROUNDS[scene.background],
                      scene.noise_seed if scene.noisy else None,
                      ((_shape_mask(o, image_size), _texture(o, image_size), COLOURS[o.colour])
                       for o in scene.objects))


def _place(obj: SceneObject) -> str:
  row, col = divmod(obj.cell, _GRID)
  return _PLACES[row][col]


def _relation(a: SceneObject, b: SceneObject) -> str:
  (row_a, col_a), (row_b, col_b) = divmod(a.cell, _GRID), divmod(b.cell, _GRID)
  if col_a != col_b:
    return "left of" if col_a < col_b else "right of"
  return "above" if row_a < row_b else "below"


def describe(scene: Scene) -> tuple[str, list[str], list[str]]:
  """(summary, one sentence per object, one sentence per relation)."""
  summary = (f"{_COUNTS[len(scene.objects)].capitalize()} shapes on a "
             f"{'noisy' if scene.noisy else 'plain'} {scene.background} background.")
  objects = [f"A {o.size} {o.colour} {o.texture} {o.shape} is {_place(o)}." for o in scene.objects]
  relations = []
  for i, j in scene.relations:
    a, b = scene.objects[i], scene.objects[j]
    relations.append(f"The {a.name} is {_relation(a, b)} the {b.name}.")
  return summary, objects, relations


def to_example(scene: Scene, example_id: str, image_size: int = IMAGE_SIZE) -> RawExample:
  """Renders and captions a scene; local pairs name their sentence by text."""
  image, boxes = render(scene, image_size)
  summary, object_sentences, relation_sentences = describe(scene)
  pairs = [LocalPair(box=box, sentence=text, score=1.0)
           for box, text in zip(boxes, object_sentences)]
  pairs += [LocalPair(box=shared.union_box(boxes[i], boxes[j]), sentence=text, score=0.5)
            for (i, j), text in zip(scene.relations, relation_sentences)]
  caption = " ".join([summary, *object_sentences, *relation_sentences])
  return RawExample(id=example_id, image=image, caption=caption, summary=summary,
                    local_pairs=tuple(pairs), source=f"synthetic/{example_id}")


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def hard_group(group: int, seed: int = 0) -> list[Scene]:
  """A base scene and `HARD_GROUP_SIZE - 1` variants, each one attribute of one object away."""
  rng = _rng(seed, "test_hard", group)
  base = sample_scene(rng)
  edits = [(i, a) for i in range(len(base.objects)) for a in ATTRIBUTES]
  chosen = rng.choice(len(edits), HARD_GROUP_SIZE - 1, replace=False)
  return [base] + [change_one_attribute(base, rng, *edits[k]) for k in chosen]


def scene(split: str, index: int, seed: int = 0) -> Scene:
  """Scene `index` of a split (for `test_hard`: member `index % 4` of group `index // 4`)."""
  if split not in SPLITS:
    raise ValueError(f"unknown synthetic split {split!r}; expected one of {SPLITS}")
  if split == "test_hard":
    group, member = divmod(index, HARD_GROUP_SIZE)
    return hard_group(group, seed)[member]
  return sample_scene(_rng(seed, split, index))


def example_id(split: str, index: int) -> str:
  if split == "test_hard":
    group, member = divmod(index, HARD_GROUP_SIZE)
    return f"test_hard_g{group:05d}_{member}"
  return f"{split}_{index:06d}"


hard_group_of = shared.hard_group_of  # `synthetic/test_hard_g00012_3` -> 12


def read_examples(manual_dir=None, split: str = "train", *, num_examples: int | None = None,
                  image_size: int = IMAGE_SIZE, seed: int = 0) -> Iterator[RawExample]:
  """Yields the split's examples (`manual_dir` is ignored: nothing is read from disk)."""
  del manual_dir
  if split not in SPLITS:
    raise ValueError(f"unknown synthetic split {split!r}; expected one of {SPLITS}")
  count = SPLIT_SIZES[split] if num_examples is None else num_examples
  if split == "test_hard":
    for group in range(math.ceil(count / HARD_GROUP_SIZE)):
      for member, hard_scene in enumerate(hard_group(group, seed)):
        index = group * HARD_GROUP_SIZE + member
        if index < count:
          yield to_example(hard_scene, example_id(split, index), image_size)
    return
  for index in range(count):
    yield to_example(scene(split, index, seed), example_id(split, index), image_size)
