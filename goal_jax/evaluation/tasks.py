"""The evaluation tasks, one function each, and `TASKS`, the registry `runner` dispatches on.

Every task is `fn(embedder, params, data, benchmark, *, geometry, tokenizer) -> report entry`
(`report.benchmark_result`); `data` is the benchmark's decoded records, or for the tasks in
`FOLDER_TASKS` the root of the user's image folder. Per task:
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
  attribute; the entry also keeps each group's accuracy (`per_group`, for a bootstrap).
- `zeroshot`: images of a user folder (ImageFolder layout) against the class prompts -> top-k.

The tasks in `SCORED_TASKS` take `scoring`, a method's test-time scorer (`scoring.MethodScoring`):
given one, their embedder returns its features, `params` is the method's whole tree, and they
rank by its `[images, texts]` scores (the metrics' `*_from_similarity`). Zero-shot always ranks
by embeddings (`scoring` module docstring).
"""
import numpy as np

from goal_jax.data import synthetic
from goal_jax.evaluation import embedding
from goal_jax.evaluation import inputs
from goal_jax.evaluation import metrics
from goal_jax.evaluation import report
from goal_jax.evaluation import sources
from goal_jax.evaluation import zeroshot
from goal_jax.text import tokenizer as text_tokenizer

# Zero-shot prompts are tokenised at CLIP's context: the model is causal, so padding never
# changes what the EOT token sees.
_PROMPT_CONTEXT = 77


def extra_captions(source) -> tuple[list[str], np.ndarray]:
  """Every record's `extra_captions` in order, and the record index of each."""
  texts, owners = [], []
  for index in range(len(source)):
    for caption in source[index]["extra_captions"]:
      texts.append(caption)
      owners.append(index)
  return texts, np.asarray(owners, np.int64)


def evaluate_retrieval(embedder, params, source, benchmark, *, geometry=None,
                       tokenizer=None, scoring=None) -> dict:
  """Recall@K both ways, every caption (long + extra) of an image counting as its caption."""
  image, text = inputs.embed_records(embedder, params, source, geometry=geometry,
                                     tokenizer=tokenizer)
  extras, owners = extra_captions(source)
  text_to_image = np.arange(len(source))
  if extras:
    text = embedding.concatenate_rows(text, inputs.embed_texts(embedder, params, extras,
                                                               tokenizer=tokenizer))
    text_to_image = np.concatenate([text_to_image, owners])
  if scoring is None:
    values = metrics.retrieval_recall(image, text, text_to_image, ks=benchmark.ks)
  else:
    values = metrics.retrieval_recall_from_similarity(scoring.similarity(image, text),
                                                      text_to_image, ks=benchmark.ks)
  return report.benchmark_result(benchmark, values, num_images=len(source),
                                 num_texts=len(text_to_image))


def evaluate_joint(embedder, params, source, benchmark, *, geometry=None,
                   tokenizer=None, scoring=None) -> dict:
  """GOAL's joint global+local mAP@K (and MRR@K); `num_texts` counts the whole mixed gallery."""
  image, text = inputs.embed_records(embedder, params, source, geometry=geometry,
                                     tokenizer=tokenizer)
  local = sources.LocalPairSource(source)
  groups, is_global = np.arange(len(source)), np.ones(len(source), bool)
  if len(local):
    local_image, local_text = inputs.embed_records(embedder, params, local, geometry=geometry,
                                                   tokenizer=tokenizer)
    image = embedding.concatenate_rows(image, local_image)
    text = embedding.concatenate_rows(text, local_text)
    groups = np.concatenate([groups, local.owners])
    is_global = np.concatenate([is_global, np.zeros(len(local), bool)])
  options = dict(mode=benchmark.joint_mode or "effective", k=benchmark.ks[0])
  if scoring is None:
    values = metrics.joint_retrieval(image, text, groups, is_global, **options)
  else:
    values = metrics.joint_retrieval_from_similarity(scoring.similarity(image, text), groups,
                                                     is_global, **options)
  return report.benchmark_result(benchmark, values, num_images=len(source),
                                 num_texts=len(groups))


def evaluate_hard_groups(embedder, params, source, benchmark, *,
                         geometry=None, tokenizer=None, scoring=None) -> dict:
  """Matching inside each `test_hard` group and 2AFC per attribute; long captions only.

  A method's scorer scores every image against every caption (`test_hard` is small), of which
  only the pairs inside a group are read.
  """
  image, text = inputs.embed_records(embedder, params, source, geometry=geometry,
                                     tokenizer=tokenizer)
  parsed = [synthetic.parse_hard_id(source[i]["id"]) for i in range(len(source))]
  groups = np.array([group for group, _ in parsed], np.int64)
  edits = [edit for _, edit in parsed]
  if scoring is None:
    values, per_group = metrics.hard_group_scores(image, text, groups, edits, per_group=True)
  else:
    values, per_group = metrics.hard_group_scores_from_similarity(
        scoring.similarity(image, text), groups, edits, per_group=True)
  return report.benchmark_result(benchmark, values, num_images=len(source),
                                 num_texts=len(source), per_group=per_group)


def evaluate_zeroshot(embedder, params, folder: str, benchmark, *,
                      geometry=None, tokenizer=None,
                      prompt_batch_size=256) -> dict:
  """Zero-shot top-k on an ImageFolder (`folder/<class>/<image>`) with the benchmark set's
  class names and prompts."""
  set_name = benchmark.zeroshot_set
  names, templates = zeroshot.zeroshot_set(set_name)
  paths, labels, classes = zeroshot.load_image_folder(
      folder, zeroshot.folder_classes(folder, set_name))
  if len(classes) != len(names):
    raise ValueError(f"zero-shot folder {folder!r} has {len(classes)} classes, "
                     f"{set_name} has {len(names)}")
  tokenizer = tokenizer or text_tokenizer.get_tokenizer()
  context = min(_PROMPT_CONTEXT, embedder.config.context_length)
  classifier = zeroshot.build_zeroshot_classifier(
      names, templates, embedder.text_encoder(embedder.place(params)),
      lambda texts: tokenizer(texts, context_length=context).ids, batch_size=prompt_batch_size)
  image = inputs.embed_image_files(embedder, params, paths, geometry=geometry)
  values = zeroshot.classify(image, classifier, labels, ks=tuple(benchmark.ks))
  values = {k: v for k, v in values.items() if k != "predictions"}
  return report.benchmark_result(benchmark, values, num_images=len(paths))


TASKS = {
    "retrieval": evaluate_retrieval,
    "joint": evaluate_joint,
    "hard_groups": evaluate_hard_groups,
    "zeroshot": evaluate_zeroshot,
}
FOLDER_TASKS = frozenset({"zeroshot"})  # read a user's image folder, not a prepared split
SCORED_TASKS = frozenset({"retrieval", "joint", "hard_groups"})  # rank by a method's scorer
