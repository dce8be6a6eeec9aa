"""Evaluation runs: benchmark names -> prepared records -> embeddings -> `report` entries.

One function serves the trainer's periodic evaluation and the `evaluate` command:
`evaluate_benchmarks(params, model_config, benchmarks, data_dir)`. Per benchmark task:
- `retrieval`: every record's image (model resolution, `center_crop` unless told otherwise) and
  every caption (the long caption at the model's context, then its `extra_captions`, each mapped to
  its image) -> `metrics.retrieval_recall` at the benchmark's cut-offs.
- `joint` (GOAL's joint test, its `mAP_goal_jointtest.py`): the global pairs plus, per record,
  one local pair, the crop of its highest-scoring local pair with that pair's sentence; unlike
  training, a full-image match counts (the crop is then the whole image), as in GOAL's test file.
  -> `metrics.joint_retrieval` in the benchmark's relevance mode.
- `hard_groups` (synthetic `test_hard`): every record's image and long caption, grouped by the
  group number in its id, with the attribute its id says it edits (`synthetic.parse_hard_id`) ->
  `metrics.hard_group_scores`: matching inside each group, and two-alternative accuracy per
  attribute.
- `zeroshot`: images of a user folder (ImageFolder layout) against the class prompts -> top-k.

Images and captions go through the training pipeline's evaluation mode (same decoding, geometry
and tokenisation as training; each record once, in order), and the towers run in one jitted,
batch-sharded step per batch (`embedding.Embedder`), compiled once per model config and mesh.
"""
import dataclasses
import os
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from goal_jax.data import builder
from goal_jax.data import detail as detail_lib
from goal_jax.data import geometry as geometry_lib
from goal_jax.data import images as images_lib
from goal_jax.data import pipeline
from goal_jax.data import raw
from goal_jax.data import synthetic
from goal_jax.evaluation import embedding
from goal_jax.evaluation import metrics
from goal_jax.evaluation import profiles
from goal_jax.evaluation import report
from goal_jax.evaluation import zeroshot
from goal_jax.text import tokenizer as text_tokenizer

DEFAULT_GEOMETRY = "center_crop"
CUSTOM_PROFILE = "custom"
# Profiles searched, in order, for a benchmark named by `dataset:split` or by its bare name.
_SEARCH_ORDER = ("goal", "longclip", "synthetic", "zeroshot")


# ----------------------------------------------------------------------------------------------
# Which benchmarks.


def _adhoc_retrieval(dataset, split):
  return profiles.Benchmark(f"{dataset}:{split}", "retrieval", dataset, split, metrics.RECALL_KS,
                            profiles.recall_columns(metrics.RECALL_KS, "t2i"))


def _find(predicate):
  return [(p, b) for p in _SEARCH_ORDER for b in profiles.get_profile(p).benchmarks
          if predicate(b)]


def _resolve_item(item):
  """One spec item -> [(profile name or None, Benchmark)]."""
  if item in profiles.PROFILES:
    return [(item, b) for b in profiles.get_profile(item).benchmarks]
  if "/" in item and item.split("/", 1)[0] in profiles.PROFILES:
    profile, name = item.split("/", 1)
    return [(profile, profiles.get_profile(profile).benchmark(name))]
  found = _find(lambda b: b.name == item)  # before `dataset:split`: names may hold a ':'
  if len(found) == 1:
    return found
  if found:
    raise ValueError(f"benchmark {item!r} is in several profiles; name one of "
                     f"{[f'{p}/{b.name}' for p, b in found]}")
  if ":" in item:
    dataset, split = item.split(":", 1)
    if not dataset or not split:
      raise ValueError(f"benchmark {item!r}: expected `dataset:split`")
    found = _find(lambda b: b.task == "retrieval" and (b.dataset, b.split) == (dataset, split))
    return found[:1] or [(None, _adhoc_retrieval(dataset, split))]
  raise ValueError(f"unknown benchmark {item!r}: use a profile {sorted(profiles.PROFILES)}, "
                   "`profile/benchmark`, a benchmark name or `dataset:split`")


def resolve_benchmarks(spec: str | Sequence[str]) -> tuple[profiles.Profile, tuple]:
  """A benchmark spec -> (profile to report under, its benchmarks in order).

  `spec` is a profile name, or items (a list, or one string joined by ",") each of which is a
  profile, `profile/benchmark name`, a benchmark name found in one profile, or `dataset:split`
  (the profile benchmark of that prepared split, else Recall@1/5/10/25/50 on it). When every
  benchmark comes from one profile the results are reported under it; otherwise under a
  `custom` profile (names that clash get their profile as a prefix).
  """
  items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
  items = [s for s in items if s]
  if not items:
    raise ValueError("no benchmark given")
  chosen = []
  for item in items:
    for profile_name, benchmark in _resolve_item(item):
      if (profile_name, benchmark) not in chosen:
        chosen.append((profile_name, benchmark))
  owners = {p for p, _ in chosen}
  if len(owners) == 1 and None not in owners:
    profile = profiles.get_profile(owners.pop())
    return profile, tuple(b for _, b in chosen)
  counts = {}
  for _, b in chosen:
    counts[b.name] = counts.get(b.name, 0) + 1
  benchmarks = tuple(dataclasses.replace(b, name=f"{p}/{b.name}") if counts[b.name] > 1 else b
                     for p, b in chosen)
  return profiles.Profile(CUSTOM_PROFILE, "benchmarks chosen by name", benchmarks), benchmarks


def markdown_table(document, profile: profiles.Profile) -> str:
  """`report.markdown_table` for a document whose profile may be an unregistered `custom` one."""
  return report.markdown_table(document, profile=profile)


def write_results(path, profile: profiles.Profile, results, metadata=None):
  """`report.write_results` (which takes any `Profile`, a `custom` one included)."""
  return report.write_results(path, profile, results, metadata)


# ----------------------------------------------------------------------------------------------
# Records.


class DecodedSource:
  """Random access to decoded records of one or more prepared splits (`a+b` concatenates)."""

  def __init__(self, sources: Sequence[Any]):
    self._sources = list(sources)
    self._offsets = np.cumsum([0] + [len(s) for s in self._sources])

  def __len__(self):
    return int(self._offsets[-1])

  def __getitem__(self, index):
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)})")
    part = int(np.searchsorted(self._offsets, index, side="right")) - 1
    return builder.decode_record(self._sources[part][index - int(self._offsets[part])])


def _prepare_command(dataset, data_dir, splits=()):
  """The `prepare` command of `splits` (all when empty); the dataset's other splits are kept."""
  manual = " --manual_dir=<raw files>" if raw.get_reader(dataset).needs_manual_dir else ""
  split_flag = f" --split={','.join(splits)}" if splits else ""
  return (f"python -m goal_jax.data.prepare --dataset={dataset}{manual} --data_dir={data_dir}"
          f"{split_flag}")


def open_split(dataset: str, split: str, data_dir) -> DecodedSource:
  """Decoded records of a prepared `dataset` split (TFDS `a+b` syntax), or a clear error."""
  if data_dir is None:
    raise ValueError(f"dataset {dataset!r} needs --data_dir: where `prepare` wrote the shards")
  try:
    return DecodedSource([builder.load_source(dataset, part, data_dir)
                          for part in split.split("+")])
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f"dataset {dataset!r} is not prepared under {data_dir}; run "
        f"`{_prepare_command(dataset, data_dir)}`") from e
  except ValueError as e:  # prepared, but not this split
    kept = list(builder.prepared_metadata(dataset, data_dir).get("reports", {}))
    missing = [p for p in split.split("+") if p not in kept]
    raise FileNotFoundError(
        f"dataset {dataset!r} split {split!r} is not prepared ({e}); run "
        f"`{_prepare_command(dataset, data_dir, missing)}`") from e


def best_local_pair(record: Mapping[str, Any]) -> int | None:
  """GOAL's test-time local pair: the highest-scoring pair, full-image matches included."""
  scores = np.asarray(record["pair_score"], np.float32)
  return int(np.argmax(scores)) if scores.size else None


def local_pair_record(record: Mapping[str, Any]) -> dict[str, Any] | None:
  """A record whose image is its best local pair's crop and whose caption is that sentence.

  The crop comes from the record's detail copy when it has one (the original pixels, as GOAL's
  test crops), else from its stored image (`goal_jax.data.detail`).
  """
  best = best_local_pair(record)
  if best is None:
    return None
  image = pipeline.decode_image(record["image"])
  if not record["pair_is_full_image"][best]:
    image = detail_lib.local_crop(record, record["pair_box"][best], image)
  sentence = int(record["pair_sentence"][best])
  text = record["caption"][record["sentence_starts"][sentence]:record["sentence_ends"][sentence]]
  return {**record, "image": np.asarray(image), "original_size": np.array(image.size[::-1]),
          "detail_tiles": [], "detail_layout": detail_lib.NO_DETAIL,
          "caption": text, "extra_captions": [], "summary": text,
          "sentence_starts": np.array([0], np.int32),
          "sentence_ends": np.array([len(text)], np.int32),
          "pair_sentence": np.zeros((0,), np.int32), "pair_box": np.zeros((0, 4), np.float32),
          "pair_score": np.zeros((0,), np.float32), "pair_is_full_image": np.zeros((0,), bool)}


class LocalPairSource:
  """The local pairs of the records that have one, as records (decoded lazily, in order)."""

  def __init__(self, source):
    self._source = source
    self.owners = np.array([i for i in range(len(source))
                            if np.size(source[i]["pair_score"])], np.int64)

  def __len__(self):
    return len(self.owners)

  def __getitem__(self, index):
    return local_pair_record(self._source[int(self.owners[index])])


# ----------------------------------------------------------------------------------------------
# Embedding records.


def pipeline_config(model_config, batch_size: int, geometry: str = DEFAULT_GEOMETRY):
  """The input pipeline's config for evaluation: model resolution and context, global fields."""
  config = pipeline.default_config()
  config.batch_size = batch_size
  config.image_size = model_config.image_size
  config.patch_size = model_config.patch_size
  config.text_context = model_config.context_length
  config.sentence_context = min(config.sentence_context, model_config.context_length)
  config.geometry = geometry
  config.fields = "global"
  config.num_workers = 0
  return config


def embed_records(embedder: embedding.Embedder, params, source, *, geometry=DEFAULT_GEOMETRY,
                  tokenizer=None) -> tuple[np.ndarray, np.ndarray]:
  """(image [N, E], long caption [N, E]) embeddings of decoded records, in source order."""
  params = embedder.place(params)
  config = pipeline_config(embedder.config, embedder.batch_size, geometry)
  num, width = len(source), embedder.config.embed_dim
  image = np.full((num, width), np.nan, np.float32)
  text = np.full((num, width), np.nan, np.float32)
  batches = pipeline.make_dataset(config, train=False, source=source, tokenizer=tokenizer)
  for batch in batches:
    out = embedder.encode_local_batch(
        params, {k: batch[k] for k in ("image", "text", "record_index", "valid")})
    valid = np.asarray(out["valid"], bool)
    index = np.asarray(out["record_index"])[valid]
    image[index], text[index] = out["image"][valid], out["text"][valid]
  missing = np.flatnonzero(np.isnan(image[:, 0]))
  if missing.size:  # would mean the pipeline dropped records: never silently score fewer
    raise RuntimeError(f"{missing.size} of {num} records were not embedded (first {missing[0]})")
  return image, text


def embed_texts(embedder, params, texts: Sequence[str], *, tokenizer=None, normalize=False,
                context_length=None) -> np.ndarray:
  """[T, E] embeddings of texts, at the model's context unless given.

  `normalize=False` suits stored captions (already in normal form); raw text wants True.
  """
  tokenizer = tokenizer or text_tokenizer.get_tokenizer()
  ids = tokenizer(list(texts), context_length=context_length or embedder.config.context_length,
                  normalize=normalize).ids
  return embedder.embed_array(params, "text", ids)


def extra_captions(source) -> tuple[list[str], np.ndarray]:
  """Every record's `extra_captions` in order, and the record index of each."""
  texts, owners = [], []
  for index in range(len(source)):
    for caption in source[index]["extra_captions"]:
      texts.append(caption)
      owners.append(index)
  return texts, np.asarray(owners, np.int64)


# ----------------------------------------------------------------------------------------------
# Tasks.


def evaluate_retrieval(embedder, params, source, benchmark, *, geometry=DEFAULT_GEOMETRY,
                       tokenizer=None) -> dict:
  """Recall@K both ways, every caption (long + extra) of an image counting as its caption."""
  image, text = embed_records(embedder, params, source, geometry=geometry, tokenizer=tokenizer)
  extras, owners = extra_captions(source)
  text_to_image = np.arange(len(source))
  if extras:
    text = np.concatenate([text, embed_texts(embedder, params, extras, tokenizer=tokenizer)])
    text_to_image = np.concatenate([text_to_image, owners])
  values = metrics.retrieval_recall(image, text, text_to_image, ks=benchmark.ks)
  return report.benchmark_result(benchmark, values, num_images=len(source),
                                 num_texts=len(text_to_image))


def evaluate_joint(embedder, params, source, benchmark, *, geometry=DEFAULT_GEOMETRY,
                   tokenizer=None) -> dict:
  """GOAL's joint global+local mAP@K (and MRR@K); `num_texts` counts the whole mixed gallery."""
  image, text = embed_records(embedder, params, source, geometry=geometry, tokenizer=tokenizer)
  local = LocalPairSource(source)
  groups, is_global = np.arange(len(source)), np.ones(len(source), bool)
  if len(local):
    local_image, local_text = embed_records(embedder, params, local, geometry=geometry,
                                            tokenizer=tokenizer)
    image, text = np.concatenate([image, local_image]), np.concatenate([text, local_text])
    groups = np.concatenate([groups, local.owners])
    is_global = np.concatenate([is_global, np.zeros(len(local), bool)])
  values = metrics.joint_retrieval(image, text, groups, is_global,
                                   mode=benchmark.joint_mode or "effective", k=benchmark.ks[0])
  return report.benchmark_result(benchmark, values, num_images=len(source),
                                 num_texts=len(groups))


def evaluate_hard_groups(embedder, params, source, benchmark, *, geometry=DEFAULT_GEOMETRY,
                         tokenizer=None) -> dict:
  """Matching inside each `test_hard` group and 2AFC per attribute; long captions only."""
  image, text = embed_records(embedder, params, source, geometry=geometry, tokenizer=tokenizer)
  parsed = [synthetic.parse_hard_id(source[i]["id"]) for i in range(len(source))]
  groups = np.array([group for group, _ in parsed], np.int64)
  values = metrics.hard_group_scores(image, text, groups, [edit for _, edit in parsed])
  return report.benchmark_result(benchmark, values, num_images=len(source),
                                 num_texts=len(source))


def folder_classes(root: str, set_name: str) -> list[str] | None:
  """Class-folder names of an image folder in the label order of zero-shot set `set_name`.

  Accepted folder names: label numbers (`0`, `1`, ...), the class names (`_` for spaces, any
  case), or ImageNet WordNet ids for the ImageNet sets. None means numeric order.
  """
  names, _ = zeroshot.zeroshot_set(set_name)
  if not os.path.isdir(root):
    raise ValueError(f"zero-shot folder {root!r} does not exist or is not a directory")
  found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
  if found and all(f.isdigit() for f in found):
    return None
  key = lambda s: s.replace("_", " ").lower()
  by_name = {key(n): i for i, n in enumerate(names)}
  if len(by_name) == len(names) and all(key(f) in by_name for f in found):
    return sorted(found, key=lambda f: by_name[key(f)])
  if set_name.startswith("imagenet"):
    wnids = zeroshot.imagenet_wnids()
    if set_name == "imagenet_o":
      wnids = [wnids[i] for i in zeroshot.imagenet_o_class_indices()]
    if set(found) <= set(wnids):
      return list(wnids)
  raise ValueError(f"zero-shot folder {root!r}: class folders {found[:5]}... are neither label "
                   f"numbers nor the {set_name} class names" +
                   (" nor WordNet ids" if set_name.startswith("imagenet") else ""))


def load_model_image(path, image_size: int, geometry: str = DEFAULT_GEOMETRY) -> np.ndarray:
  """An image file -> normalised float32 [S, S, 3] model input (the pipeline's geometry)."""
  image = images_lib.open_rgb(path)
  return pipeline.normalize_image(geometry_lib.resize_image(image, image_size, geometry))


def embed_image_files(embedder, params, paths: Sequence[str], *,
                      geometry=DEFAULT_GEOMETRY) -> np.ndarray:
  """[N, E] embeddings of image files, loaded one batch at a time."""
  size = embedder.config.image_size
  chunks = (np.stack([load_model_image(p, size, geometry) for p in chunk])
            for chunk in embedding.chunked(list(paths), embedder.batch_size))
  return embedder.embed(params, "image", chunks)


def evaluate_zeroshot_folder(embedder, params, folder: str, set_name: str, ks=(1,), *,
                             benchmark=None, geometry=DEFAULT_GEOMETRY, tokenizer=None,
                             prompt_batch_size=256) -> dict:
  """Zero-shot top-k on an ImageFolder (`folder/<class>/<image>`) with set_name's prompts."""
  names, templates = zeroshot.zeroshot_set(set_name)
  paths, labels, classes = zeroshot.load_image_folder(folder, folder_classes(folder, set_name))
  if len(classes) != len(names):
    raise ValueError(f"zero-shot folder {folder!r} has {len(classes)} classes, "
                     f"{set_name} has {len(names)}")
  tokenizer = tokenizer or text_tokenizer.get_tokenizer()
  context = min(77, embedder.config.context_length)  # causal: padding never changes the EOT
  classifier = zeroshot.build_zeroshot_classifier(
      names, templates, embedder.text_encoder(embedder.place(params)),
      lambda texts: tokenizer(texts, context_length=context).ids, batch_size=prompt_batch_size)
  image = embed_image_files(embedder, params, paths, geometry=geometry)
  values = zeroshot.classify(image, classifier, labels, ks=tuple(ks))
  values = {k: v for k, v in values.items() if k != "predictions"}
  benchmark = benchmark or profiles.get_profile("zeroshot").benchmark(set_name)
  return report.benchmark_result(benchmark, values, num_images=len(paths))


def evaluate_benchmarks(params, model_config, benchmarks, data_dir, *, batch_size=64, mesh=None,
                        tokenizer=None, geometry=DEFAULT_GEOMETRY, zeroshot_folders=None,
                        embedder=None, verbose=False) -> dict[str, dict]:
  """Evaluates `params` on benchmarks; returns {benchmark name: report.benchmark_result}.

  Args:
    params: CLIP params (host arrays, or device arrays on a mesh: used where they are).
    model_config: their `CLIPConfig`.
    benchmarks: a spec for `resolve_benchmarks` (profile, names, `dataset:split`).
    data_dir: where `python -m goal_jax.data.prepare` wrote the shards.
    batch_size: global rows per device step (rounded up to a multiple of the device count).
    mesh: devices to shard over; default the params' mesh, else all devices.
    tokenizer: default the shared CLIP tokenizer.
    geometry: `center_crop` (CLIP, GOAL) or `squash`.
    zeroshot_folders: {zero-shot benchmark name: ImageFolder root} for `zeroshot` benchmarks.
    embedder: an `embedding.Embedder` (or an object with its methods) to use instead.
    verbose: print each benchmark's metrics as it finishes.
  """
  _, chosen = resolve_benchmarks(benchmarks)
  sources = {b.name: open_split(b.dataset, b.split, data_dir)  # fail before any long run
             for b in chosen if b.task != "zeroshot"}
  # A split of another size than the paper's still runs, before any embedding is spent, but
  # its result says it is not the paper's protocol (a 10-image smoke test, a subset).
  ad_hoc = {b.name: (f"{len(sources[b.name])} images in {b.dataset}:{b.split}; the paper's "
                     f"protocol uses {b.num_images}, so this is not comparable to it")
            for b in chosen if b.name in sources and b.num_images is not None
            and len(sources[b.name]) != b.num_images}
  for name, note in ad_hoc.items():
    logging.warning("Benchmark %s: %s", name, note)
  chosen = [dataclasses.replace(b, num_images=None) if b.name in ad_hoc else b for b in chosen]
  embedder = embedder or embedding.Embedder.for_params(params, model_config, mesh, batch_size)
  params = embedder.place(params)
  common = dict(geometry=geometry, tokenizer=tokenizer)
  results = {}
  for benchmark in chosen:
    if benchmark.task == "zeroshot":
      folders = zeroshot_folders or {}
      if benchmark.zeroshot_set not in folders:
        raise ValueError(f"zero-shot benchmark {benchmark.name!r} needs an image folder "
                         f"(--zeroshot_folder with --zeroshot_classes={benchmark.zeroshot_set})")
      result = evaluate_zeroshot_folder(embedder, params, folders[benchmark.zeroshot_set],
                                        benchmark.zeroshot_set, benchmark.ks,
                                        benchmark=benchmark, **common)
    else:
      source = sources[benchmark.name]
      task = {"retrieval": evaluate_retrieval, "joint": evaluate_joint,
              "hard_groups": evaluate_hard_groups}.get(benchmark.task)
      if task is None:
        raise ValueError(f"benchmark {benchmark.name!r} has unknown task {benchmark.task!r}")
      result = task(embedder, params, source, benchmark, **common)
      if benchmark.name in ad_hoc:
        result["ad_hoc"] = ad_hoc[benchmark.name]
    results[benchmark.name] = result
    if verbose:
      shown = ", ".join(f"{k} {v:.2f}" for k, v in result["metrics"].items())
      print(f"{benchmark.name}: {shown}", flush=True)
  return results
