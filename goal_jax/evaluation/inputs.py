"""What gets embedded: decoded records, image files and texts -> float32 `[N, E]` embeddings.

Records go through the training pipeline's evaluation mode (same decoding, geometry and
tokenisation as training; each record once, in order), image files through the same
`images.model_image`, texts through the shared tokenizer; the rows then run through an
`embedding.Embedder`. The evaluation tasks and the `embed` command both embed here.
"""
from typing import Sequence

import jax
import numpy as np

from goal_jax.data import images
from goal_jax.data import pipeline
from goal_jax.evaluation import embedding
from goal_jax.models import families
from goal_jax.text import tokenizer as text_tokenizer

DEFAULT_GEOMETRY = "center_crop"


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


def embed_records(embedder: embedding.Embedder, params, source, *, geometry=None,
                  tokenizer=None) -> tuple[np.ndarray, np.ndarray]:
  """(image [N, E], long caption [N, E]) embeddings (or the embedder's features) of decoded
  records, in source order; images resized (`geometry`, default the model family's) and
  normalised as the model's family was trained."""
  params = embedder.place(params)
  family = families.of(embedder.config)
  config = pipeline_config(embedder.config, embedder.batch_size, geometry or family.geometry)
  num = len(source)
  indices, images, texts = [], [], []
  batches = pipeline.make_dataset(config, train=False, source=source, tokenizer=tokenizer,
                                  image_norm=(family.image_mean, family.image_std))
  for batch in batches:
    out = embedder.encode_local_batch(
        params, {k: batch[k] for k in ("image", "text", "record_index", "valid")})
    valid = np.asarray(out["valid"], bool)
    indices.append(np.asarray(out["record_index"])[valid])
    images.append(jax.tree.map(lambda x, v=valid: np.asarray(x, np.float32)[v], out["image"]))
    texts.append(jax.tree.map(lambda x, v=valid: np.asarray(x, np.float32)[v], out["text"]))
  index = np.concatenate(indices) if indices else np.zeros(0, int)
  missing = np.setdiff1d(np.arange(num), index)
  if missing.size:  # would mean the pipeline dropped records: never silently score fewer
    raise RuntimeError(f"{missing.size} of {num} records were not embedded (first {missing[0]})")
  _, order = np.unique(index, return_index=True)  # each record's row, in source order
  in_source_order = lambda parts: jax.tree.map(lambda x: x[order],
                                               embedding.concatenate_rows(*parts))
  return in_source_order(images), in_source_order(texts)


def embed_texts(embedder, params, texts: Sequence[str], *, tokenizer=None, normalize=False,
                context_length=None) -> np.ndarray:
  """[T, E] embeddings of texts, at the model's context unless given.

  `normalize=False` suits stored captions (already in normal form); raw text wants True.
  """
  tokenizer = tokenizer or text_tokenizer.get_tokenizer()
  ids = tokenizer(list(texts), context_length=context_length or embedder.config.context_length,
                  normalize=normalize).ids
  return embedder.embed_array(params, "text", ids)


def embed_image_files(embedder, params, paths: Sequence[str], *,
                      geometry=None) -> np.ndarray:
  """[N, E] embeddings of image files, loaded one batch at a time, resized and normalised as
  the model's family was trained (`geometry` overrides the resize)."""
  size, family = embedder.config.image_size, families.of(embedder.config)
  geometry = geometry or family.geometry
  chunks = (np.stack([images.model_image(images.open_rgb(p), size, geometry, family.image_mean,
                                         family.image_std) for p in chunk])
            for chunk in embedding.chunked(list(paths), embedder.batch_size))
  return embedder.embed(params, "image", chunks)
