"""`synthetic` v2: shape scenes whose long captions can only be told apart by their details.

Why it exists: the demo and the tests need a long-caption dataset that ships with the code, trains
a tiny CLIP on a laptop CPU in minutes, and asks the question GOAL and MulCLIP are about: does
aligning the *details* of a caption with image *regions* make a better model than global
contrastive fine-tuning alone? Version 1 (`synthetic_v1`, still prepared by `--version=1`) could
not answer it: its shapes and textures were not visible at the demo model's 64 px input, a batch's
captions were told apart by their colour set and layout alone, and its local sentences stated a
position the crop cannot show. Every choice below follows from what the benchmark must measure,
and was fixed before any method was compared:

- **Every stated attribute is visible at the model's input** (64 px, 8 px patches: one object's
  2 x 2 cell holds 4 x 4 patches). Scenes are drawn at 128 px; a large shape spans 80 % of its
  cell (26 px at 64 px), a small one 50 % (16 px); textures have a period of at least 8 px at
  128 px (4 px at 64) so they survive the resize; four shapes with different outlines.
- **Captions are told apart by details and binding, not by the gist.** Every scene has exactly
  four shapes, one per cell of a 2 x 2 layout (the layout never varies), with four *different*
  colours out of five and four *different* shapes out of five: the colour set and the shape set
  each take one of five values, so inside a batch they identify almost nothing. What identifies
  a scene is which colour goes with which shape, texture and size (the binding), and where.
  Object sentences come in a random order, so the order of the caption does not give away the
  layout; 1-2 relation sentences state where some objects are.
- **A local pair's crop shows what its sentence states.** An object sentence ("A small red
  striped circle.") names colour, size, texture and shape, no position; its box is the object's
  whole cell, so the crop keeps the shape's size relative to the cell, and the texture at twice
  the global image's resolution. A relation sentence's box is the union of its two cells and
  shows where the two are.
- **Which object is the local pair is random, not a tie-break.** GOAL trains on each image's
  best-scoring pair; object pairs get distinct scores (1.0, 0.9, 0.8, 0.7) in a random order, so
  the trained object is uniform over the four, and is not tied to the first sentence.
- **A generator seed** (`prepare synthetic --seed=N`, the demo's `data_seed=N`) regenerates
  every split with the same statistics, so results can be checked on seeds nobody tuned on.

`test_hard`: groups of 4 records, a base scene then three variants, each ONE edit of the base,
named in the record id (`test_hard_g00012_2_binding`): `colour` (one object takes the unused
colour), `shape` (the unused shape), `size`, `texture`, or `binding` (two objects swap their
colours: the colour set, the shape set and the layout stay the same). Groups cycle through the
five edits so each is equally common. A model that keeps only the gist ranks an image's caption
among its group's four at chance (25 %); `goal_jax.evaluation` reports that within-group accuracy
and a two-alternative (base vs variant) accuracy per edit.

**Hard negatives** (FG-CLIP's third kind of supervision), in the `train` split only: each local
pair's sentence gets `HARD_NEGATIVES` captions that change exactly one thing it states, drawn
from the generator's own vocabulary: an object sentence's colour, shape, size or texture; a
relation sentence's colour or shape of one of its two objects, or the two objects' colours
swapped (the binding). A candidate that is still true of the scene is never kept (`describes`):
the region must not be taught that a true caption is false. They come from a random stream of
their own, so the scenes, captions and pairs are exactly those of a generator without them; the
`test` and `test_hard` splits carry none.

**Version 3: transfer splits** (the embedded analogue of training on DOCCI and testing on
Urban1k, where MulCLIP and GOAL report their largest gains). Five colour–shape pairs
(`HELD_OUT_PAIRS`) and one background (`HELD_OUT_BACKGROUND`) never occur in a `train` or `test`
scene, nor in a training hard negative; `test_transfer` and `test_transfer_hard` are drawn only
from scenes that hold at least one held-out pair, with any background, and are otherwise drawn
exactly as the other splits (a scene is drawn as in version 2 and kept or drawn again). The pairs
are a diagonal of the 5 x 5 colour–shape table, so every colour and every shape is still trained
with four partners and each is held out exactly once: a held-out pair is a new binding of two
words the model knows, which is the question "can it bind a colour to a shape it never saw
together?". In a `test_transfer_hard` group the edited object is one holding a held-out pair (a
colour, shape or binding edit removes the pair from the variant; a size or texture edit keeps it).
Versions 1 and 2 are still prepared by `--version`, unchanged.

Everything is deterministic: example `i` of a split is a function of `(version, seed, split, i)`
alone.
"""
import dataclasses
import math
import re
from typing import Iterator, Sequence

import numpy as np

from goal_jax.data import synthetic_v1
from goal_jax.data.records import LocalPair, RawExample
from goal_jax.data import synthetic_parts
from goal_jax.data.synthetic_parts import SceneObject, draw_shape, paint, union_box

VERSIONS = (1, 2, 3)
LATEST_VERSION = 3
SPLITS = ("train", "test", "test_hard", "test_transfer", "test_transfer_hard")
TRANSFER_SPLITS = ("test_transfer", "test_transfer_hard")  # version 3 on
SPLIT_SIZES = {"train": 3000, "test": 300, "test_hard": 400, "test_transfer": 300,
               "test_transfer_hard": 400}
HARD_SPLITS = ("test_hard", "test_transfer_hard")
IMAGE_SIZE = 128
HARD_GROUP_SIZE = 4
NUM_OBJECTS = 4
MAX_RELATIONS = 2
_GRID = 2

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 230),
           "yellow": (235, 210, 40), "purple": (150, 60, 200)}
SIZES = {"small": 0.5, "large": 0.8}  # side as a fraction of a layout cell
TEXTURES = ("solid", "striped", "checkered")
BACKGROUNDS = {"grey": (140, 140, 140), "black": (20, 20, 20), "brown": (120, 85, 55)}
EDITS = ("colour", "shape", "size", "texture", "binding")
OBJECT_SCORES = (1.0, 0.9, 0.8, 0.7)  # distinct: the best pair is a random object, not the first
RELATION_SCORE = 0.5
HARD_NEGATIVES = 10  # per training pair, as FineHARD's 10 per region
_NEGATIVE_STREAM = 1  # the hard negatives' own random stream (the scenes' stays as it was)
# Version 3's held-out combinations: a diagonal of the colour x shape table (each colour and each
# shape held out once, trained with its four other partners) and one background.
HELD_OUT_PAIRS = (("red", "circle"), ("green", "square"), ("blue", "triangle"),
                  ("yellow", "diamond"), ("purple", "cross"))
HELD_OUT_BACKGROUND = "brown"
_PLACES = (("in the top left corner", "in the top right corner"),
           ("in the bottom left corner", "in the bottom right corner"))
_SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}
# Shared with version 1, part of this dataset's API (evaluation reads the edit from an id).
NOISE_AMPLITUDE = synthetic_parts.NOISE_AMPLITUDE
shade = synthetic_parts.shade
parse_hard_id = synthetic_parts.parse_hard_id
hard_group_of = synthetic_parts.hard_group_of


@dataclasses.dataclass(frozen=True)
class Scene:
  background: str
  noisy: bool
  objects: tuple[SceneObject, ...]  # in caption order
  relations: tuple[tuple[int, int], ...]  # pairs of object indices
  scores: tuple[float, ...]  # local-pair score of each object
  noise_seed: int


def _pick(rng: np.random.Generator, values, count: int) -> list:
  return [values[k] for k in rng.permutation(len(values))[:count]]


def sample_scene(rng: np.random.Generator) -> Scene:
  """Four objects, one per cell, with distinct colours and distinct shapes; 1-2 relations."""
  colours = _pick(rng, tuple(COLOURS), NUM_OBJECTS)
  shapes = _pick(rng, SHAPES, NUM_OBJECTS)
  cells = rng.permutation(_GRID * _GRID)  # caption order: a random order of the cells
  objects = tuple(SceneObject(
      shape=shape, colour=colour, size=tuple(SIZES)[rng.integers(len(SIZES))],
      texture=TEXTURES[rng.integers(len(TEXTURES))], cell=int(cell),
      jitter=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))))
      for shape, colour, cell in zip(shapes, colours, cells))
  pairs = [(i, j) for i in range(NUM_OBJECTS) for j in range(NUM_OBJECTS) if i != j]
  num_relations = int(rng.integers(1, MAX_RELATIONS + 1))
  relations = tuple(pairs[k] for k in rng.choice(len(pairs), num_relations, replace=False))
  return Scene(background=tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
               noisy=bool(rng.integers(2)), objects=objects, relations=relations,
               scores=tuple(_pick(rng, OBJECT_SCORES, NUM_OBJECTS)),
               noise_seed=int(rng.integers(2**31)))


def held_out_objects(scene: Scene) -> list[int]:
  """Indices of the objects whose colour–shape pair is held out (version 3)."""
  return [k for k, o in enumerate(scene.objects) if (o.colour, o.shape) in HELD_OUT_PAIRS]


def in_domain(scene: Scene) -> bool:
  """Whether a version-3 `train`/`test`/`test_hard` scene may hold it: no held-out pair or
  background."""
  return not held_out_objects(scene) and scene.background != HELD_OUT_BACKGROUND


def _draw(rng: np.random.Generator, split: str, version: int) -> Scene:
  """A scene of `split`: version 3 draws again until it is in domain (transfer: until it holds
  a held-out pair); earlier versions keep the first draw."""
  while True:
    drawn = sample_scene(rng)
    if version < 3 or (bool(held_out_objects(drawn)) if split in TRANSFER_SPLITS
                       else in_domain(drawn)):
      return drawn


def edit_scene(scene: Scene, edit: str, rng: np.random.Generator,
               objects_to_edit: Sequence[int] | None = None) -> Scene:
  """The scene with one edit (`EDITS`) of one object (two for `binding`); the rest unchanged.

  The edited object is drawn from `objects_to_edit` (default: any)."""
  objects = list(scene.objects)
  if objects_to_edit is None:
    k = int(rng.integers(NUM_OBJECTS))
  else:
    k = int(objects_to_edit[rng.integers(len(objects_to_edit))])
  obj = objects[k]
  if edit == "colour":
    unused = [c for c in COLOURS if c not in {o.colour for o in objects}]
    objects[k] = dataclasses.replace(obj, colour=unused[rng.integers(len(unused))])
  elif edit == "shape":
    unused = [s for s in SHAPES if s not in {o.shape for o in objects}]
    objects[k] = dataclasses.replace(obj, shape=unused[rng.integers(len(unused))])
  elif edit == "size":
    objects[k] = dataclasses.replace(obj, size="large" if obj.size == "small" else "small")
  elif edit == "texture":
    others = [t for t in TEXTURES if t != obj.texture]
    objects[k] = dataclasses.replace(obj, texture=others[rng.integers(len(others))])
  elif edit == "binding":
    j = (k + 1 + int(rng.integers(NUM_OBJECTS - 1))) % NUM_OBJECTS
    objects[k] = dataclasses.replace(obj, colour=objects[j].colour)
    objects[j] = dataclasses.replace(objects[j], colour=obj.colour)
  else:
    raise ValueError(f"unknown edit {edit!r}; expected one of {EDITS}")
  return dataclasses.replace(scene, objects=tuple(objects))


def cell_box(cell: int, image_size: int = IMAGE_SIZE) -> tuple[float, float, float, float]:
  """(x1, y1, x2, y2) of a layout cell: an object sentence's local-pair box."""
  side = image_size / _GRID
  row, col = divmod(cell, _GRID)
  return (col * side, row * side, (col + 1) * side, (row + 1) * side)


def _object_square(obj: SceneObject, image_size: int) -> tuple[int, int, int]:
  """Top-left corner and side of the square the shape is drawn in, inside its cell."""
  x1, y1, x2, _ = cell_box(obj.cell, image_size)
  cell = x2 - x1
  side = int(round(SIZES[obj.size] * cell))
  slack = (cell - side) / 2 * 0.6  # keeps the shape well inside its cell
  cx = (x1 + x2) / 2 + obj.jitter[0] * slack
  cy = y1 + cell / 2 + obj.jitter[1] * slack
  return int(round(cx - side / 2)), int(round(cy - side / 2)), side


def _shape_mask(obj: SceneObject, image_size: int) -> np.ndarray:
  x0, y0, side = _object_square(obj, image_size)
  return draw_shape(obj.shape, x0, y0, side, image_size, square_inset=side // 8,
                    arm=max(2, side // 6))


def _texture(obj: SceneObject, image_size: int) -> np.ndarray:
  """bool `[H, W]`: True where the texture uses the darker shade (phase fixed to the shape)."""
  x0, y0, _ = _object_square(obj, image_size)
  v, u = np.mgrid[0:image_size, 0:image_size]
  u, v = u - x0, v - y0
  if obj.texture == "solid":
    return np.zeros((image_size, image_size), dtype=bool)
  if obj.texture == "striped":  # horizontal bands of 4 px: a period of 8 px
    return (v // 4) % 2 == 1
  if obj.texture == "checkered":  # squares of 5 px: a period of 10 px
    return ((u // 5) + (v // 5)) % 2 == 1
  raise ValueError(f"unknown texture {obj.texture!r}")


def render(scene: Scene, image_size: int = IMAGE_SIZE):
  """Draws a scene; returns (uint8 image `[S, S, 3]`, the tight box of each drawn object)."""
  return paint(image_size, BACKGROUNDS[scene.background],
               scene.noise_seed if scene.noisy else None,
               ((_shape_mask(o, image_size), _texture(o, image_size), COLOURS[o.colour])
                for o in scene.objects))


def _relation(a: SceneObject, b: SceneObject) -> str:
  (row_a, col_a), (row_b, col_b) = divmod(a.cell, _GRID), divmod(b.cell, _GRID)
  if row_a == row_b:
    return "left of" if col_a < col_b else "right of"
  if col_a == col_b:
    return "above" if row_a < row_b else "below"
  return f"diagonally {'above' if row_a < row_b else 'below'}"


def _object_sentence(size: str, colour: str, texture: str, shape: str) -> str:
  return f"A {size} {colour} {texture} {shape}."


def _relation_sentence(colour_a: str, shape_a: str, relation: str, colour_b: str,
                       shape_b: str) -> str:
  return f"The {colour_a} {shape_a} is {relation} the {colour_b} {shape_b}."


def describe(scene: Scene) -> tuple[str, list[str], list[str]]:
  """(summary, one sentence per object, one sentence per relation)."""
  summary = f"Four shapes on a {'noisy' if scene.noisy else 'plain'} {scene.background} background."
  objects = [_object_sentence(o.size, o.colour, o.texture, o.shape) for o in scene.objects]
  relations = []
  for i, j in scene.relations:
    a, b = scene.objects[i], scene.objects[j]
    relations.append(_relation_sentence(a.colour, a.shape, _relation(a, b), b.colour, b.shape))
  return summary, objects, relations


_RELATIONS = ("left of", "right of", "above", "below", "diagonally above", "diagonally below")


def _any(words) -> str:
  return "(" + "|".join(words) + ")"


_OBJECT_SENTENCE = re.compile(
    f"A {_any(SIZES)} {_any(COLOURS)} {_any(TEXTURES)} {_any(SHAPES)}\\.$")
_RELATION_SENTENCE = re.compile(f"The {_any(COLOURS)} {_any(SHAPES)} is {_any(_RELATIONS)} "
                                f"the {_any(COLOURS)} {_any(SHAPES)}\\.$")


def describes(scene: Scene, sentence: str) -> bool:
  """Whether an object or relation sentence is true of the scene (some object, or some two
  objects, are as it says)."""
  found = _OBJECT_SENTENCE.match(sentence)
  if found:
    size, colour, texture, shape = found.groups()
    return any((o.size, o.colour, o.texture, o.shape) == (size, colour, texture, shape)
               for o in scene.objects)
  found = _RELATION_SENTENCE.match(sentence)
  if found:
    colour_a, shape_a, relation, colour_b, shape_b = found.groups()
    return any((a.colour, a.shape, b.colour, b.shape) == (colour_a, shape_a, colour_b, shape_b)
               and _relation(a, b) == relation
               for a in scene.objects for b in scene.objects if a is not b)
  raise ValueError(f"not a synthetic object or relation sentence: {sentence!r}")


def _object_edits(obj: SceneObject) -> list[str]:
  """Every sentence that changes one attribute of the object's sentence."""
  out = [_object_sentence(obj.size, c, obj.texture, obj.shape) for c in COLOURS if c != obj.colour]
  out += [_object_sentence(obj.size, obj.colour, obj.texture, s) for s in SHAPES if s != obj.shape]
  out += [_object_sentence(z, obj.colour, obj.texture, obj.shape) for z in SIZES if z != obj.size]
  out += [_object_sentence(obj.size, obj.colour, t, obj.shape) for t in TEXTURES
          if t != obj.texture]
  return out


def _relation_edits(a: SceneObject, b: SceneObject) -> list[str]:
  """Every sentence that changes one object's colour or shape, or swaps the two colours."""
  relation = _relation(a, b)
  out = [_relation_sentence(c, a.shape, relation, b.colour, b.shape) for c in COLOURS
         if c != a.colour]
  out += [_relation_sentence(a.colour, a.shape, relation, c, b.shape) for c in COLOURS
          if c != b.colour]
  out += [_relation_sentence(a.colour, s, relation, b.colour, b.shape) for s in SHAPES
          if s != a.shape]
  out += [_relation_sentence(a.colour, a.shape, relation, b.colour, s) for s in SHAPES
          if s != b.shape]
  if a.colour != b.colour:
    out.append(_relation_sentence(b.colour, a.shape, relation, a.colour, b.shape))
  return out


def names_held_out(sentence: str) -> bool:
  """Whether an object or relation sentence names a held-out colour–shape pair."""
  found = _OBJECT_SENTENCE.match(sentence)
  if found:
    _, colour, _, shape = found.groups()
    return (colour, shape) in HELD_OUT_PAIRS
  found = _RELATION_SENTENCE.match(sentence)
  if found:
    colour_a, shape_a, _, colour_b, shape_b = found.groups()
    return (colour_a, shape_a) in HELD_OUT_PAIRS or (colour_b, shape_b) in HELD_OUT_PAIRS
  raise ValueError(f"not a synthetic object or relation sentence: {sentence!r}")


def hard_negatives(scene: Scene, rng: np.random.Generator, count: int = HARD_NEGATIVES,
                   hold_out: bool = False) -> list[tuple[str, ...]]:
  """Up to `count` false one-edit sentences per local pair, in `to_example`'s pair order;
  `hold_out` (version 3) never names a held-out pair, not even as a negative."""
  edits = [_object_edits(o) for o in scene.objects]
  edits += [_relation_edits(scene.objects[i], scene.objects[j]) for i, j in scene.relations]
  out = []
  for candidates in edits:
    false = [text for text in candidates if not describes(scene, text)
             and not (hold_out and names_held_out(text))]
    out.append(tuple(false[k] for k in rng.permutation(len(false))[:count]))
  return out


def to_example(scene: Scene, example_id: str, image_size: int = IMAGE_SIZE,
               negatives: Sequence[tuple[str, ...]] | None = None) -> RawExample:
  """Renders and captions a scene; local pairs name their sentence by text and carry
  `negatives` (one tuple per pair, `hard_negatives`; None: none)."""
  image, _ = render(scene, image_size)
  summary, object_sentences, relation_sentences = describe(scene)
  cells = [cell_box(o.cell, image_size) for o in scene.objects]
  pairs = [LocalPair(box=box, sentence=text, score=score)
           for box, text, score in zip(cells, object_sentences, scene.scores)]
  pairs += [LocalPair(box=union_box(cells[i], cells[j]), sentence=text, score=RELATION_SCORE)
            for (i, j), text in zip(scene.relations, relation_sentences)]
  if negatives is not None:
    pairs = [dataclasses.replace(p, hard_negatives=tuple(n)) for p, n in zip(pairs, negatives)]
  caption = " ".join([summary, *object_sentences, *relation_sentences])
  return RawExample(id=example_id, image=image, caption=caption, summary=summary,
                    local_pairs=tuple(pairs), source=f"synthetic/{example_id}")


def _rng(version: int, seed: int, split: str, index: int,
         stream: int | None = None) -> np.random.Generator:
  # The version is part of the stream, so a version never replays another's random numbers.
  key = [version, seed, _SPLIT_CODES[split], index]
  return np.random.default_rng(key if stream is None else key + [stream])


def negative_rng(seed: int, split: str, index: int,
                 version: int = LATEST_VERSION) -> np.random.Generator:
  """The hard negatives' random stream of example `index`: apart from its scene's."""
  return _rng(version, seed, split, index, _NEGATIVE_STREAM)


def splits_of(version: int) -> tuple[str, ...]:
  """The splits a version has (version 1: `synthetic_v1.SPLITS`)."""
  if version == 1:
    return synthetic_v1.SPLITS
  return SPLITS if version >= 3 else tuple(s for s in SPLITS if s not in TRANSFER_SPLITS)


def group_edits(group: int) -> tuple[str, ...]:
  """The three edits of hard group `group`: consecutive groups cycle through `EDITS` evenly."""
  start = (HARD_GROUP_SIZE - 1) * group
  return tuple(EDITS[(start + k) % len(EDITS)] for k in range(HARD_GROUP_SIZE - 1))


def hard_group(group: int, seed: int = 0, version: int = LATEST_VERSION,
               split: str = "test_hard") -> list[Scene]:
  """A base scene and one variant per edit of `group_edits(group)`.

  Version 3: a `test_hard` group is drawn again until every variant is in domain too; a
  `test_transfer_hard` group edits an object that holds a held-out pair.
  """
  rng = _rng(version, seed, split, group)
  while True:
    base = _draw(rng, split, version)
    objects_to_edit = held_out_objects(base) if split in TRANSFER_SPLITS else None
    scenes = [base] + [edit_scene(base, edit, rng, objects_to_edit) for edit in group_edits(group)]
    if version < 3 or split in TRANSFER_SPLITS or all(in_domain(s) for s in scenes):
      return scenes


def _check_split(split: str, version: int) -> None:
  if split not in splits_of(version):
    raise ValueError(f"unknown synthetic split {split!r} for version {version}; expected one of "
                     f"{splits_of(version)}")


def scene(split: str, index: int, seed: int = 0, version: int = LATEST_VERSION) -> Scene:
  """Scene `index` of a split (a hard split: member `index % 4` of group `index // 4`)."""
  _check_split(split, version)
  if split in HARD_SPLITS:
    group, member = divmod(index, HARD_GROUP_SIZE)
    return hard_group(group, seed, version, split)[member]
  return _draw(_rng(version, seed, split, index), split, version)


def example_id(split: str, index: int) -> str:
  if split in HARD_SPLITS:
    group, member = divmod(index, HARD_GROUP_SIZE)
    edit = "base" if member == 0 else group_edits(group)[member - 1]
    return f"{split}_g{group:05d}_{member}_{edit}"
  return f"{split}_{index:06d}"


def count(manual_dir=None, split: str = "train", *, num_examples: int | None = None,
          version: int = LATEST_VERSION, **unused) -> int | None:
  """The examples `read_examples` yields with these options (the progress bar's total)."""
  del manual_dir, unused
  if split in SPLITS and split not in splits_of(version):
    return 0
  if num_examples is not None:
    return num_examples
  if version == 1:
    return synthetic_v1.SPLIT_SIZES.get(split)
  return SPLIT_SIZES.get(split)


def read_examples(manual_dir=None, split: str = "train", *, num_examples: int | None = None,
                  image_size: int = IMAGE_SIZE, seed: int = 0,
                  version: int = LATEST_VERSION) -> Iterator[RawExample]:
  """Yields the split's examples (`manual_dir` is ignored: nothing is read from disk).

  `version=1` yields the original benchmark (`synthetic_v1`), unchanged, at its own image size;
  a split a version does not have (the transfer splits before version 3) yields nothing.
  """
  del manual_dir
  if version not in VERSIONS:
    raise ValueError(f"unknown synthetic version {version!r}; expected one of {VERSIONS}")
  if split in SPLITS and split not in splits_of(version):
    return
  if version == 1:
    yield from synthetic_v1.read_examples(split=split, num_examples=num_examples, seed=seed)
    return
  _check_split(split, version)
  count = SPLIT_SIZES[split] if num_examples is None else num_examples
  if split in HARD_SPLITS:
    for group in range(math.ceil(count / HARD_GROUP_SIZE)):
      for member, hard_scene in enumerate(hard_group(group, seed, version, split)):
        index = group * HARD_GROUP_SIZE + member
        if index < count:
          yield to_example(hard_scene, example_id(split, index), image_size)
    return
  for index in range(count):
    this = scene(split, index, seed, version)
    negatives = (hard_negatives(this, negative_rng(seed, split, index, version),
                                hold_out=version >= 3) if split == "train" else None)
    yield to_example(this, example_id(split, index), image_size, negatives)
