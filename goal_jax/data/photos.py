"""`photos`: ten real photographs shipped inside installed wheels, with long captions of our own.

Why: every converter and the evaluation path need real photos with long, multi-sentence captions
and a few boxes, offline and in a few kilobytes of code. The images come from scikit-image,
scikit-learn and matplotlib (licence next to each entry); the captions, summaries and boxes were
written for this project by looking at the images (boxes in original pixels, approximate).

- `read_examples(None, "test")`: the photos as a dataset (`prepare("photos", ...)`).
- `write_raw_layout(format_name, root)`: the same photos written in a raw dataset layout (DOCCI,
  DCI, Urban1k, ShareGPT4V, COCO/Flickr Karpathy, GOAL JSON), so each converter is tested offline.
  It returns the `FixtureEntry`s the converter should produce.
"""
import dataclasses
import importlib.util
import json
import pathlib
import re
from typing import Iterator

import numpy as np
from PIL import Image

from goal_jax.data.records import LocalPair, RawExample

SPLITS = ("test",)


@dataclasses.dataclass(frozen=True)
class Photo:
  name: str
  package: str  # the wheel's top-level package
  path: str  # file inside the package
  licence: str
  caption: str
  summary: str
  boxes: tuple[tuple[int, tuple[int, int, int, int]], ...]  # (sentence index, x1, y1, x2, y2)


PHOTOS = (
    Photo("astronaut", "skimage", "data/astronaut.png",
          "Public domain (NASA; skimage.data.astronaut docstring)",
          "A studio portrait of a smiling woman astronaut with short light brown hair. She wears "
          "a bright orange launch and entry suit with a dark blue ring around her neck. A round "
          "mission patch is sewn on her chest, and a name tag sits above the other pocket. A white "
          "helmet with a dark visor rests in the lower right corner. Behind her on the right "
          "stands a white model of the space shuttle with its orange fuel tank. An American flag "
          "hangs on the left side of the frame.",
          "An astronaut in an orange suit in front of a flag and a shuttle model.",
          ((0, (20, 10, 370, 512)), (3, (275, 340, 505, 512)), (4, (350, 0, 475, 285)))),
    Photo("chelsea", "skimage", "data/chelsea.png",
          "CC0 (photographer Stefan van der Walt; skimage.data.chelsea docstring)",
          "A close-up of a tabby cat looking slightly to the right of the camera. Its fur is "
          "striped in shades of brown, grey and cream. The cat has large green eyes with narrow "
          "dark pupils. A pink nose sits above a white muzzle with long white whiskers. The "
          "background is softly blurred in pale pink and white.",
          "A close-up of a brown tabby cat with green eyes.",
          ((2, (130, 80, 350, 170)), (3, (230, 210, 300, 265)))),
    Photo("coffee", "skimage", "data/coffee.png",
          "CC0 (photographer Rachel Michetti; skimage.data.coffee docstring)",
          "An overhead view of a cup of espresso on a wooden table. The cup is white inside and "
          "dark red outside, and the coffee has a light brown crema. It stands on a matching red "
          "saucer with a glossy rim. A small silver spoon lies on the saucer to the right of the "
          "cup. The wooden table has a warm brown grain with worn patches.",
          "A red cup of espresso on a saucer with a spoon.",
          ((1, (170, 15, 420, 300)), (3, (315, 65, 425, 330)))),
    Photo("rocket", "skimage", "data/rocket.jpg",
          "Public domain (SpaceX; skimage.data.rocket docstring)",
          "A rocket stands upright on its launch pad at dusk. The tall white rocket is in the "
          "centre of the frame with a rounded nose cone. Two thin lightning towers rise on either "
          "side of it. Large steel lattice towers stand at the left and right edges of the "
          "picture. Bright lights glow at the base of the pad against a deep blue sky.",
          "A white rocket on its launch pad at dusk.",
          ((1, (295, 125, 345, 410)), (3, (0, 0, 90, 427)))),
    Photo("hubble", "skimage", "data/hubble_deep_field.jpg",
          "Public domain (NASA; skimage.data.hubble_deep_field docstring)",
          "A deep field photograph of space filled with thousands of distant galaxies. Most "
          "galaxies are tiny specks of white, blue and orange light on a black background. A few "
          "larger spiral galaxies appear near the top of the picture. A bright orange elliptical "
          "galaxy glows in the right half of the image. A single star with sharp diffraction "
          "spikes shines just below it.",
          "The Hubble deep field full of distant galaxies.",
          ((3, (695, 440, 760, 500)), (4, (725, 545, 785, 605)))),
    Photo("retina", "skimage", "data/retina.jpg",
          "CC0 1.0 (Mikael Häggström, Wikimedia Commons; skimage.data.retina docstring)",
          "A colour photograph of the back of a human eye, shown as a disc on a black background. "
          "The retina is orange red and covered with branching dark red blood vessels. On the "
          "left side is the bright yellow optic disc where the vessels meet. In the centre is the "
          "darker macula with the fovea at its middle. A small notch marks the upper right edge "
          "of the disc.",
          "A photograph of a healthy human retina.",
          ((2, (120, 590, 320, 765)), (3, (620, 620, 790, 790)))),
    Photo("ihc", "skimage", "data/ihc.png",
          "No known copyright restrictions (CMMI; skimage.data.immunohistochemistry docstring)",
          "A microscope image of stained tissue from the colon. Several long glands are cut across "
          "and stained brown along their cell walls. The cells inside the glands have pale blue "
          "nuclei. Between the glands the tissue is pale with scattered blue nuclei. One round "
          "gland sits on its own near the bottom centre.",
          "A stained microscope section of colon tissue.",
          ((4, (250, 305, 385, 505)),)),
    Photo("china", "sklearn", "datasets/images/china.jpg",
          "CC BY 2.0 (danielbuechele on Flickr; sklearn/datasets/images/README.txt)",
          "A tall Chinese pagoda rises on the left side of the picture. It has several tiers of "
          "curved roofs with green and orange tiles and red columns. A golden ornament stands on "
          "the very top of the roof. Behind the pagoda a wide lake stretches to the horizon with a "
          "small island and many boats. Green trees fill the lower part of the image and the "
          "right edge. The sky is pale and hazy.",
          "A Chinese pagoda above a lake among trees.",
          ((0, (60, 28, 370, 392)), (3, (320, 215, 555, 320)))),
    Photo("flower", "sklearn", "datasets/images/flower.jpg",
          "CC BY 2.0 (vultilion on Flickr; sklearn/datasets/images/README.txt)",
          "A close-up of a single orange dahlia in full bloom. Its round head is made of many "
          "curled petals in soft peach and orange tones. The petals near the centre are tightly "
          "packed and darker. A second flower is partly visible at the bottom edge. The "
          "background is a dark blur of green and blue leaves.",
          "An orange dahlia flower against a dark background.",
          ((0, (170, 85, 445, 360)), (3, (285, 370, 465, 427)))),
    Photo("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg",
          "Public domain as a US Navy photograph (matplotlib sample data; status unconfirmed)",
          "A formal portrait of an elderly woman in a dark navy uniform. She wears a black "
          "officer's cap with a gold badge on the front. Her glasses have thick frames, and her "
          "grey hair is short. Rows of colourful ribbons are pinned on the right side of her "
          "jacket, and a name tag is on the left. An American flag hangs behind her on the left "
          "against a blue background.",
          "A portrait of an elderly naval officer in uniform.",
          ((1, (150, 20, 375, 165)), (3, (320, 495, 455, 530)))),
)


def sentences(caption: str) -> list[str]:
  """The caption's sentences (our captions are plain: a sentence ends with '. ')."""
  return re.split(r"(?<=\.)\s+", caption.strip())


def photo_path(photo: Photo) -> pathlib.Path:
  """The file inside the installed wheel (found without importing the package)."""
  spec = importlib.util.find_spec(photo.package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"photo {photo.name}: package {photo.package} is not installed")
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / photo.path


def local_pairs(photo: Photo, scale=(1.0, 1.0)) -> tuple[LocalPair, ...]:
  """The photo's boxes as local pairs with sentence text, boxes scaled by (sx, sy)."""
  texts = sentences(photo.caption)
  sx, sy = scale
  return tuple(LocalPair(box=(x1 * sx, y1 * sy, x2 * sx, y2 * sy), sentence=texts[index],
                         score=1.0) for index, (x1, y1, x2, y2) in photo.boxes)


def count(manual_dir=None, split: str = "test") -> int:
  """The photos `read_examples` yields (the progress bar's total)."""
  del manual_dir, split
  return len(PHOTOS)


def read_examples(manual_dir=None, split: str = "test") -> Iterator[RawExample]:
  """The photos straight from the wheels, at full size."""
  del manual_dir
  if split not in SPLITS:
    raise ValueError(f"photos has no split {split!r}; splits: {SPLITS}")
  for photo in PHOTOS:
    yield RawExample(id=photo.name, image=str(photo_path(photo)), caption=photo.caption,
                     summary=photo.summary, local_pairs=local_pairs(photo),
                     source=f"{photo.package}/{photo.path}")


# --- raw layouts for converter tests -----------------------------------------------------------

FORMATS = ("docci", "dci", "urban1k", "sharegpt4v", "coco_karpathy", "flickr30k_karpathy",
           "goal_json")


@dataclasses.dataclass(frozen=True)
class FixtureEntry:
  """What a converter should produce for one photo of a raw layout."""
  id: str
  splits: tuple[str, ...]
  caption: str  # the caption as the converter should read it (before normalisation)
  summary: str | None  # the reader's summary field, if the format has one
  extra_captions: tuple[str, ...]
  size: tuple[int, int]  # (height, width) of the written image
  local_pairs: tuple[LocalPair, ...]
  photo: Photo


def write_raw_layout(format_name: str, root, *, short_side: int = 96) -> list[FixtureEntry]:
  """Writes the photos in raw layout `format_name` under `root`; returns the expected entries.

  Images are written as JPEGs with their short side at `short_side` (small and fast); boxes are
  scaled with them, so they stay in the written image's pixels.
  """
  if format_name not in FORMATS:
    raise ValueError(f"unknown raw layout {format_name!r}; layouts: {FORMATS}")
  root = pathlib.Path(root)
  return globals()[f"_write_{format_name}"](root, short_side)


def _save_image(photo: Photo, path: pathlib.Path, short_side: int):
  """Writes a downscaled JPEG; returns its (height, width) and the (sx, sy) box scale."""
  with Image.open(photo_path(photo)) as opened:
    image = opened.convert("RGB")
  width, height = image.size
  scale = short_side / min(width, height)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  path.parent.mkdir(parents=True, exist_ok=True)
  image.resize(size, Image.Resampling.BICUBIC).save(path, format="JPEG", quality=95)
  return (size[1], size[0]), (size[0] / width, size[1] / height)


def _entry(photo, record_id, splits, size, *, caption=None, summary=None, extra=(), pairs=()):
  return FixtureEntry(record_id, tuple(splits), caption or photo.caption, summary, tuple(extra),
                      size, tuple(pairs), photo)


def _write_json(path: pathlib.Path, value):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(value, indent=1), encoding="utf-8")


_DOCCI_SPLITS = ("train",) * 4 + ("test",) * 3 + ("qual_dev",) + ("qual_test",) * 2


def _write_docci(root, short_side):
  lines, entries, counters = [], [], {}
  for photo, split in zip(PHOTOS, _DOCCI_SPLITS):
    example_id = f"{split}_{counters.setdefault(split, 0):05d}"
    counters[split] += 1
    size, _ = _save_image(photo, root / "images" / f"{example_id}.jpg", short_side)
    lines.append(json.dumps({"example_id": example_id, "split": split,
                             "image_file": f"{example_id}.jpg", "description": photo.caption}))
    member_of = (split, "test_qual") if split in ("test", "qual_test") else (split,)
    entries.append(_entry(photo, example_id, member_of, size))
  (root / "docci_descriptions.jsonlines").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return entries


_DCI_SPLITS = ("train",) * 6 + ("valid",) * 2 + ("test",) * 2
DCI_GOAL_TEST = (2, 5, 8)  # photos listed in the fixture's GOAL DCI_test.json


def _write_dci(root, short_side):
  base = root / "densely_captioned_images"
  splits, goal_test, entries = {"train": [], "valid": [], "test": []}, [], []
  for index, (photo, split) in enumerate(zip(PHOTOS, _DCI_SPLITS)):
    image_name = f"sa_{1543972 + index}.jpg"
    size, _ = _save_image(photo, base / "photos" / image_name, short_side)
    annotation = f"{112956 + index}-data.json"
    _write_json(base / "complete" / annotation, {
        "image": image_name, "short_caption": photo.summary, "extra_caption": photo.caption,
        "height": size[0], "width": size[1], "mask_keys": [], "mask_data": {}})
    splits[split].append(annotation)
    member_of = [split, "full"]
    if index in DCI_GOAL_TEST:
      goal_test.append({"filename": f"../DCI/densely_captioned_images/photos/{image_name}",
                        "caption": photo.caption})
      member_of.append("goal_test")
    entries.append(_entry(photo, image_name[:-4], member_of, size, summary=photo.summary))
  _write_json(base / "splits.json", splits)
  _write_json(base / "DCI_test.json", goal_test)
  return entries


def _write_urban1k(root, short_side):
  entries = []
  for k, photo in enumerate(PHOTOS, 1):
    size, _ = _save_image(photo, root / "Urban1k" / "image" / f"{k}.jpg", short_side)
    path = root / "Urban1k" / "caption" / f"{k}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(photo.caption + "\nA second line that readers must ignore.\n",
                    encoding="utf-8")
    entries.append(_entry(photo, str(k), ("test",), size))
  return entries


_SHAREGPT4V_ROOTS = ("coco/train2017/{:012d}.jpg", "sam/images/sa_{}.jpg",
                     "llava/llava_pretrain/images/00000/{:09d}.jpg")


def _write_sharegpt4v(root, short_side):
  items, entries = [], []
  for index, photo in enumerate(PHOTOS):
    image = _SHAREGPT4V_ROOTS[index % 3].format(100 + index)
    size, _ = _save_image(photo, root / image, short_side)
    first, *rest = sentences(photo.caption)
    value = first + "\n\n" + " ".join(rest)  # Share-Captioner writes paragraph breaks
    items.append({"id": pathlib.PurePosixPath(image).stem, "image": image, "conversations": [
        {"from": "human", "value": "<image>\nDescribe this image in detail."},
        {"from": "gpt", "value": value}]})
    entries.append(_entry(photo, pathlib.PurePosixPath(image).stem, ("test",), size,
                          caption=value.replace("\n", " ")))
  _write_json(root / "share-captioner_coco_lcs_sam_1246k_1107.json", items)
  return entries


_COCO_SPLITS = ("test",) * 4 + ("val",) * 2 + ("train",) * 2 + ("restval",) * 2
_FLICKR_SPLITS = ("test",) * 5 + ("val",) * 2 + ("train",) * 3


def _karpathy_sentences(photo: Photo, sixth: bool) -> list[str]:
  texts = [photo.summary] + sentences(photo.caption)[:4]
  return texts + ["A sixth caption that the usual protocol drops."] if sixth else texts


def _write_karpathy(root, short_side, coco: bool):
  images, entries = [], []
  for index, photo in enumerate(PHOTOS):
    split = (_COCO_SPLITS if coco else _FLICKR_SPLITS)[index]
    if coco:
      folder = "val2014" if split in ("test", "val", "restval") else "train2014"
      filename = f"COCO_{folder}_{391895 + index:012d}.jpg"
      record_id, path = str(391895 + index), root / folder / filename
    else:
      folder, filename = "", f"{1000092795 + index}.jpg"
      record_id, path = filename[:-4], root / "flickr30k-images" / filename
    size, _ = _save_image(photo, path, short_side)
    texts = _karpathy_sentences(photo, sixth=index == 0)
    image = {"filename": filename, "imgid": index, "split": split,
             "sentids": list(range(5 * index, 5 * index + len(texts))),
             "sentences": [{"tokens": t.lower().strip(".").split(), "raw": t, "imgid": index,
                            "sentid": 5 * index + j} for j, t in enumerate(texts)]}
    if coco:
      image.update(filepath=folder, cocoid=391895 + index)
    images.append(image)
    entries.append(_entry(photo, record_id, (split,), size, caption=texts[0],
                          extra=texts[1:5]))
  name = "dataset_coco.json" if coco else "dataset_flickr30k.json"
  _write_json(root / name, {"images": images, "dataset": "coco" if coco else "flickr30k"})
  return entries


def _write_coco_karpathy(root, short_side):
  return _write_karpathy(root, short_side, coco=True)


def _write_flickr30k_karpathy(root, short_side):
  return _write_karpathy(root, short_side, coco=False)


GOAL_FULL_IMAGE = 0  # the photo whose training entry has an extra whole-image segment


def _write_goal_json(root, short_side):
  """`docci_test.json` (list) and `DCI_segment_sim_bbox_del_org.json` (training, segments)."""
  listing, training, entries = [], [], []
  for index, photo in enumerate(PHOTOS):
    size, scale = _save_image(photo, root / "photos" / f"{photo.name}.jpg", short_side)
    listing.append({"filename": f"/home/someone/GOAL/photos/{photo.name}.jpg",
                    "caption": photo.caption})
    pairs = list(local_pairs(photo, scale))
    if index == GOAL_FULL_IMAGE:
      pairs.append(LocalPair((0.0, 0.0, float(size[1]), float(size[0])), sentences(
          photo.caption)[-1], score=15.0, is_full_image=True))
    segments = []
    for k, pair in enumerate(pairs):
      x1, y1, x2, y2 = (int(round(v)) for v in pair.box)
      crop = ("original_image.jpg" if pair.is_full_image else f"{photo.name}_max_{k}.png")
      segments.append({
          "filename": f"chage/path/to/your/directory/{photo.name}.jpg_results/{crop}",
          "caption": pair.sentence.rstrip("."), "similarity_score": 20.0 + k,
          "bbox_coordinates": {"x1": x1, "y1": y1, "x2": x2, "y2": y2,
                               "width": x2 - x1, "height": y2 - y1}})
    training.append({"original_filename": f"../DCI/photos/{photo.name}.jpg",
                     "original_caption": photo.caption, "segment": segments})
    expected_pairs = []
    for k, p in enumerate(pairs):
      x1, y1, x2, y2 = (float(int(round(v))) for v in p.box)
      expected_pairs.append(LocalPair((x1, y1, x2, y2), p.sentence.rstrip("."), 20.0 + k,
                                      p.is_full_image, norm_size=(y2 - y1, x2 - x1)))
    expected_pairs = tuple(expected_pairs)
    entries.append(_entry(photo, photo.name, ("docci_test",), size))
    entries.append(_entry(photo, photo.name, ("dci_train",), size, pairs=expected_pairs))
  _write_json(root / "docci_test.json", listing)
  _write_json(root / "datasets" / "DCI_segment_sim_bbox_del_org.json", training)
  return entries


def load_rgb(photo: Photo) -> np.ndarray:
  """The photo as an HxWx3 uint8 array at full size."""
  with Image.open(photo_path(photo)) as opened:
    return np.asarray(opened.convert("RGB"))
