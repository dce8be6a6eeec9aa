"""Zero-shot classification: shipped class names and prompts, classifier weights, accuracy.

The class-name and template lists live as plain files in `classnames/` (sources and licences in
`classnames/README.md`). A zero-shot classifier is the normalised mean of each class's normalised
prompt embeddings (CLIP's recipe); an image's prediction is the class with the largest dot product.
"""
import functools
import json
import os

import jax
import numpy as np

from goal_jax.evaluation import metrics

CLASSNAMES_DIR = os.path.join(os.path.dirname(__file__), "classnames")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")

# Benchmark -> (class-name list, template set). ImageNet-V2 keeps ImageNet's 1,000 classes and
# order; ImageNet-O uses the 200 ImageNet classes its images were flagged as (sorted wnids).
ZEROSHOT_SETS = {
    "cifar10": ("cifar10", "openai_cifar"),
    "cifar100": ("cifar100", "openai_cifar"),
    "imagenet": ("imagenet", "openai_imagenet"),
    "imagenet_v2": ("imagenet", "openai_imagenet"),
    "imagenet_o": ("imagenet_o", "openai_imagenet"),
}


def _read_lines(filename):
  path = os.path.join(CLASSNAMES_DIR, filename)
  with open(path, encoding="utf-8") as f:
    lines = [line.rstrip("\n") for line in f]
  if not lines or any(not line.strip() for line in lines):
    raise ValueError(f"{path}: empty file or blank line")
  return lines


@functools.lru_cache(maxsize=None)
def imagenet_wnids():
  """The 1,000 ImageNet-1k WordNet ids in label order (sorted, as the dataset's folders)."""
  return tuple(_read_lines("imagenet_wnids.txt"))


@functools.lru_cache(maxsize=None)
def imagenet_o_class_indices():
  """ImageNet-1k label index of each of ImageNet-O's 200 classes, in ImageNet-O label order."""
  index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
  return tuple(index[wnid] for wnid in _read_lines("imagenet_o_wnids.txt"))


@functools.lru_cache(maxsize=None)
def load_class_names(name):
  """Cleaned class names of `cifar10`, `cifar100`, `imagenet` (= `imagenet_v2`) or `imagenet_o`."""
  if name in ("imagenet", "imagenet_v2"):
    return tuple(_read_lines("imagenet_classnames.txt"))
  if name == "imagenet_o":
    names = load_class_names("imagenet")
    return tuple(names[i] for i in imagenet_o_class_indices())
  if name in ("cifar10", "cifar100"):
    return tuple(_read_lines(f"{name}_classnames.txt"))
  raise ValueError(f"unknown class-name list {name!r}; have cifar10, cifar100, imagenet, "
                   "imagenet_v2, imagenet_o")


@functools.lru_cache(maxsize=None)
def load_templates(name):
  """Prompt templates (`{c}` marks the class): openai_imagenet, simple_imagenet, openai_cifar."""
  path = os.path.join(CLASSNAMES_DIR, "templates.json")
  with open(path, encoding="utf-8") as f:
    sets = json.load(f)
  if name not in sets:
    raise ValueError(f"unknown template set {name!r}; {path} has {sorted(sets)}")
  return tuple(sets[name])


def zeroshot_set(benchmark):
  """(class names, templates) for a benchmark named in ZEROSHOT_SETS."""
  if benchmark not in ZEROSHOT_SETS:
    raise ValueError(f"unknown zero-shot benchmark {benchmark!r}; have {sorted(ZEROSHOT_SETS)}")
  names, prompts = ZEROSHOT_SETS[benchmark]
  return load_class_names(names), load_templates(prompts)


def _normalise(x, axis=-1):
  norm = np.linalg.norm(x, axis=axis, keepdims=True)
  if np.any(norm == 0):
    raise ValueError("a text embedding has zero norm; cannot normalise it")
  return x / norm


def build_zeroshot_classifier(class_names, templates, encode_text_fn, tokenize_fn, *,
                              batch_size=256):
  """Zero-shot weights: per class, the normalised mean of its normalised prompt embeddings.

  Args:
    class_names: C class names.
    templates: P format strings with a `{c}` field.
    encode_text_fn: int ids [batch_size, L] -> [batch_size, E] embeddings, or a dict holding them
      under "embedding" (as CLIP.encode_text returns). Always called with batch_size rows (the
      last batch is zero-padded) so a jitted function compiles once.
    tokenize_fn: list of strings -> int ids [n, L].
    batch_size: prompts per encode call.

  Returns:
    float32 [C, E], rows L2-normalised.
  """
  class_names, templates = list(class_names), list(templates)
  if not class_names or not templates:
    raise ValueError(f"need classes and templates, got {len(class_names)} and {len(templates)}")
  bad = [t for t in templates if "{c}" not in t]
  if bad:
    raise ValueError(f"template {bad[0]!r} has no '{{c}}' field for the class name")
  prompts = [t.format(c=name) for name in class_names for t in templates]
  embeddings = []
  for start in range(0, len(prompts), batch_size):
    ids = np.asarray(tokenize_fn(prompts[start:start + batch_size]))
    count = ids.shape[0]
    ids = np.concatenate([ids, np.zeros((batch_size - count,) + ids.shape[1:], ids.dtype)])
    out = encode_text_fn(ids)
    out = jax.device_get(out["embedding"] if isinstance(out, dict) else out)  # explicit fetch
    embeddings.append(np.asarray(out, dtype=np.float32)[:count])
  per_prompt = _normalise(np.concatenate(embeddings))
  per_class = per_prompt.reshape(len(class_names), len(templates), -1).mean(axis=1)
  return _normalise(per_class).astype(np.float32)


def classify(image_emb, classifier, labels=None, ks=(1, 5), *,
             block_size=metrics.DEFAULT_BLOCK_SIZE):
  """Top-k predictions and, with labels, top-k accuracy in %.

  Ties go to the lower class index (jax.lax.top_k order). Host arrays in and out, every copy
  explicit (`metrics.top_k`), so it runs under `jax.transfer_guard("disallow")`.

  Args:
    image_emb: [N, E] image embeddings.
    classifier: [C, E] zero-shot weights.
    labels: optional [N] int true classes.
    ks: cut-offs for accuracy; predictions hold max(ks) classes per image (at most C).

  Returns:
    {"predictions": int [N, max k]} plus {"top1": %, "top5": %, ...} when labels are given.
  """
  _, predictions = metrics.top_k(image_emb, classifier, max(ks), block_size=block_size)
  out = {"predictions": predictions}
  if labels is not None:
    labels = np.asarray(labels)
    num_classes = np.shape(classifier)[0]
    if labels.shape != (predictions.shape[0],):
      raise ValueError(f"labels must have shape ({predictions.shape[0]},), got {labels.shape}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
      raise ValueError(f"label of image {bad[0]} is {labels[bad[0]]}, outside [0, {num_classes})")
    for k in ks:
      hit = (predictions[:, :k] == labels[:, None]).any(axis=1)
      out[f"top{k}"] = float(100.0 * hit.mean())
  return out


def _list_class_folders(root):
  return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def folder_classes(root: str, set_name: str) -> list[str] | None:
  """Class-folder names of an image folder in the label order of zero-shot set `set_name`.

  Accepted folder names: label numbers (`0`, `1`, ...), the class names (`_` for spaces, any
  case), or ImageNet WordNet ids for the ImageNet sets. None means numeric order.
  """
  names, _ = zeroshot_set(set_name)
  if not os.path.isdir(root):
    raise ValueError(f"zero-shot folder {root!r} does not exist or is not a directory")
  found = _list_class_folders(root)
  if found and all(f.isdigit() for f in found):
    return None
  key = lambda s: s.replace("_", " ").lower()
  by_name = {key(n): i for i, n in enumerate(names)}
  if len(by_name) == len(names) and all(key(f) in by_name for f in found):
    return sorted(found, key=lambda f: by_name[key(f)])
  if set_name.startswith("imagenet"):
    wnids = imagenet_wnids()
    if set_name == "imagenet_o":
      wnids = [wnids[i] for i in imagenet_o_class_indices()]
    if set(found) <= set(wnids):
      return list(wnids)
  raise ValueError(f"zero-shot folder {root!r}: class folders {found[:5]}... are neither label "
                   f"numbers nor the {set_name} class names" +
                   (" nor WordNet ids" if set_name.startswith("imagenet") else ""))


def image_files(folder, extensions=IMAGE_EXTENSIONS) -> list[str]:
  """Names of the image files directly in `folder` (by suffix, any case), sorted."""
  suffixes = tuple(e.lower() for e in extensions)
  return sorted(f for f in os.listdir(folder)
                if f.lower().endswith(suffixes) and os.path.isfile(os.path.join(folder, f)))


def load_image_folder(root, classes=None, extensions=IMAGE_EXTENSIONS):
  """Lists an ImageFolder layout: `root/<class folder>/<image>`.

  Args:
    root: directory with one sub-folder per class.
    classes: folder names in label order. By default the sorted folder names, compared as integers
      when every name is a number (ImageNet-V2 names its folders 0..999 by label).
    extensions: image file suffixes to keep (case-insensitive); other files are ignored.

  Returns:
    (paths, labels, classes): sorted file paths, int32 labels, the folder name of each label.
  """
  if not os.path.isdir(root):
    raise ValueError(f"image folder {root!r} does not exist or is not a directory")
  found = _list_class_folders(root)
  if not found:
    raise ValueError(f"image folder {root!r} has no class sub-folders")
  if classes is None:
    classes = sorted(found, key=int) if all(n.isdigit() for n in found) else found
  classes = list(classes)
  missing, extra = set(classes) - set(found), set(found) - set(classes)
  if missing or extra:
    raise ValueError(f"image folder {root!r}: class folders missing {sorted(missing)[:5]}, "
                     f"unexpected {sorted(extra)[:5]}")
  paths, labels = [], []
  for label, name in enumerate(classes):
    folder = os.path.join(root, name)
    files = image_files(folder, extensions)
    if not files:
      raise ValueError(f"class folder {folder!r} holds no image "
                       f"({', '.join(e.lower() for e in extensions)})")
    paths.extend(os.path.join(folder, f) for f in files)
    labels.extend([label] * len(files))
  return paths, np.asarray(labels, dtype=np.int32), classes
