"""Batched, jitted region-sentence matching: many images' candidates per device step.

GOAL scores one image at a time with CLIP-L/14-336: `S = 100 * cos(crop, sentence)` for the
image's crops and sentences, then an argmax per sentence (its released LISM code). Here
the host packs whole images into fixed-size steps (`crop_batch` crops, `text_batch` sentences;
the last step padded), and ONE jitted function embeds every crop and sentence of the step, scores
all (sentence, crop) pairs, masks pairs of different images and takes each sentence's argmax.
Shapes never change, so it compiles once; the host prepares and packs step n+1 while the device
runs step n. An image is never split across steps, so its result does not depend on its
neighbours' presence beyond floating-point batch effects, and a chunk-aligned resume repeats the
same steps exactly (`goal_jax.lism.mine`).

The score is the model's own logit: `exp(logit_scale) * cos` (CLIP's scale: 100 for OpenAI
checkpoints), plus `logit_bias` for a SigLIP scorer (its sigmoid's logit; the argmax is the same
as the cosine's either way). Crops arrive as uint8 (4x less host-to-device traffic) and are
normalised on the device with the scorer's family's mean and std.
"""
import dataclasses
import hashlib
import math
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from goal_jax import sharding
from goal_jax.data import geometry
from goal_jax.data import images as images_lib
from goal_jax.models import checkpoint
from goal_jax.models import families

_PAD_CROP, _PAD_SENTENCE = -1, -2  # owners of padding rows: never equal, so never matched


@dataclasses.dataclass(frozen=True)
class Scorer:
  """What matching needs from a model; every function is jittable and pure in `params`.

  Attributes:
    params: the model parameters (host or device arrays).
    image_size: side of the square image input.
    context_length: longest token sequence the text encoder takes.
    encode_images: `(params, images f32 [B, S, S, 3] CLIP-normalised) -> [B, E]` L2-normalised.
    encode_texts: `(params, ids int32 [B, L]) -> [B, E]` L2-normalised.
    logit_scale: `params -> scalar` log temperature; scores are `exp(.) * cos`.
    logit_bias: `params -> scalar` added to the scores (SigLIP's b); None: none.
    tokenizer: how sentences become ids (None: CLIP's BPE).
    image_mean, image_std: the family's normalisation of pixels in [0, 1] (None: OpenAI's).
    geometry: how the family's processor makes a square input (`center_crop` or `squash`).
  """
  params: Any
  image_size: int
  context_length: int
  encode_images: Callable[[Any, jax.Array], jax.Array]
  encode_texts: Callable[[Any, jax.Array], jax.Array]
  logit_scale: Callable[[Any], jax.Array]
  logit_bias: Callable[[Any], jax.Array] | None = None
  tokenizer: Any = None
  image_mean: tuple[float, float, float] | None = None
  image_std: tuple[float, float, float] | None = None
  geometry: str = "center_crop"


def model_scorer(params, config, tokenizer=None) -> Scorer:
  """A `Scorer` of a converted model of either family (`tokenizer`: a SigLIP's, which its
  checkpoint folder keeps)."""
  family = families.of(config)
  model = family.model_class(config)
  cls = family.model_class

  def encode_images(p, images):
    return model.apply({"params": p}, images, method=cls.encode_image)["embedding"]

  def encode_texts(p, ids):
    return model.apply({"params": p}, ids, method=cls.encode_text)["embedding"]

  bias = (lambda p: p["logit_bias"]) if "logit_bias" in params else None
  return Scorer(params, config.image_size, config.context_length, encode_images, encode_texts,
                lambda p: p["logit_scale"], bias, tokenizer, family.image_mean, family.image_std,
                family.geometry)


def scorer_id(params: Any, dtype: str | None = None) -> str:
  """What the matches depend on of a scorer: a digest of its weights (names, shapes, dtypes,
  bytes) and the compute dtype. Not its path: a moved checkpoint scores alike, so mining that
  resumes from it keeps its chunks."""
  digest = hashlib.blake2b(digest_size=16)
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0],
                           key=lambda item: jax.tree_util.keystr(item[0])):
    value = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)} {value.dtype} {value.shape};".encode())
    digest.update(value.tobytes())
  return f"weights {digest.hexdigest()} dtype={dtype or 'checkpoint'}"


def checkpoint_scorer_id(checkpoint_dir: str, dtype: str | None = None) -> str:
  """`scorer_id` of the weights a checkpoint holds."""
  params, _ = checkpoint.load_model(checkpoint_dir)
  return scorer_id(params, dtype)


def load_scorer(checkpoint_dir: str, dtype: str | None = None) -> Scorer:
  """The scorer of a model checkpoint (`goal_jax.models.checkpoint`); `dtype` overrides compute."""
  params, config = checkpoint.load_model(checkpoint_dir)
  if dtype:
    config = dataclasses.replace(config, dtype=dtype)
  return model_scorer(params, config, families.of(config).tokenizer(checkpoint_dir))


def crop_candidates(image: Image.Image, boxes: np.ndarray, original_hw, size: int,
                    crop_geometry: str = "center_crop") -> np.ndarray:
  """uint8 `[K, size, size, 3]`: each box (original pixels) cut from the stored image, resized.

  Bounding-box crops without masking, as GOAL's `segment_with_background`; `center_crop` is the
  HF CLIP processor's shortest-side resize and centre crop, GOAL's matcher input.
  """
  stored_hw = (image.height, image.width)
  out = np.empty((len(boxes), size, size, 3), np.uint8)
  for k, box in enumerate(np.asarray(boxes, np.float64)):
    window = geometry.crop_box(box, original_hw, stored_hw)
    out[k] = geometry.resize_image(image.crop(window), size, crop_geometry)
  return out


class ImageWork(NamedTuple):
  """One image's matching input.

  Attributes:
    crops: uint8 `[K, S, S, 3]`, candidate 0 the full image.
    ids: int32 `[M, L]` sentence tokens.
    payload: anything the caller wants back with the result.
  """
  crops: np.ndarray
  ids: np.ndarray
  payload: Any = None


class Match(NamedTuple):
  """One image's result: per sentence, the best candidate index and its score."""
  work: ImageWork
  best_candidate: np.ndarray  # int32 [M]
  best_score: np.ndarray  # float32 [M]


def pack(works: Iterable[ImageWork], crop_batch: int, text_batch: int
         ) -> Iterator[list[ImageWork]]:
  """Groups consecutive images into steps of <= `crop_batch` crops and <= `text_batch` sentences."""
  step, crops, sentences = [], 0, 0
  for work in works:
    k, m = len(work.crops), len(work.ids)
    if k > crop_batch or m > text_batch:
      raise ValueError(f"an image has {k} candidates and {m} sentences; a step holds at most "
                       f"{crop_batch} and {text_batch} (raise crop_batch/text_batch)")
    if step and (crops + k > crop_batch or sentences + m > text_batch):
      yield step
      step, crops, sentences = [], 0, 0
    step.append(work)
    crops, sentences = crops + k, sentences + m
  if step:
    yield step


def match_scores(scorer: Scorer, params, crops, crop_owner, ids, sentence_owner):
  """Each sentence's best crop among its own image's crops: (flat crop index, score) `[Bt]`.

  Args:
    scorer: the model functions.
    params: its parameters.
    crops: uint8 `[Bc, S, S, 3]`.
    crop_owner: int32 `[Bc]` image slot of each crop.
    ids: int32 `[Bt, L]`.
    sentence_owner: int32 `[Bt]` image slot of each sentence.
  """
  images = images_lib.normalize_image_on_device(crops, scorer.image_mean, scorer.image_std)
  image_emb = scorer.encode_images(params, images).astype(jnp.float32)
  text_emb = scorer.encode_texts(params, ids).astype(jnp.float32)
  cos = jnp.matmul(text_emb, image_emb.T, precision=jax.lax.Precision.HIGHEST)
  scores = jnp.exp(scorer.logit_scale(params).astype(jnp.float32)) * cos
  if scorer.logit_bias is not None:
    scores = scores + scorer.logit_bias(params).astype(jnp.float32)
  scores = jnp.where(sentence_owner[:, None] == crop_owner[None, :], scores, -jnp.inf)
  best = jnp.argmax(scores, axis=1)  # first maximum: a tie goes to the full image (index 0)
  return best.astype(jnp.int32), jnp.take_along_axis(scores, best[:, None], axis=1)[:, 0]


class Matcher:
  """Runs `match_scores` over a stream of images in fixed-size steps on all local devices.

  Attributes:
    crop_batch, text_batch: step sizes (rounded up to a multiple of the device count).
    traces: how many times the step was traced (1 after any number of steps).
  """

  def __init__(self, scorer: Scorer, crop_batch: int = 256, text_batch: int = 256,
               mesh: jax.sharding.Mesh | None = None):
    self.scorer = scorer
    self.mesh = mesh or sharding.make_mesh(devices=jax.local_devices())
    devices = self.mesh.devices.size
    self.crop_batch = math.ceil(crop_batch / devices) * devices
    self.text_batch = math.ceil(text_batch / devices) * devices
    self.traces = 0
    self._params = jax.device_put(scorer.params, sharding.replicated(self.mesh))

    def step(params, crops, crop_owner, ids, sentence_owner):
      self.traces += 1
      return match_scores(scorer, params, crops, crop_owner, ids, sentence_owner)

    self._step = jax.jit(step)

  def _assemble(self, works: list[ImageWork]) -> dict[str, np.ndarray]:
    size = self.scorer.image_size
    length = works[0].ids.shape[1]
    batch = {"crops": np.zeros((self.crop_batch, size, size, 3), np.uint8),
             "crop_owner": np.full((self.crop_batch,), _PAD_CROP, np.int32),
             "ids": np.zeros((self.text_batch, length), np.int32),
             "sentence_owner": np.full((self.text_batch,), _PAD_SENTENCE, np.int32)}
    c = s = 0
    for slot, work in enumerate(works):
      k, m = len(work.crops), len(work.ids)
      if work.crops.shape[1:] != (size, size, 3) or work.ids.shape[1:] != (length,):
        raise ValueError(f"crops {work.crops.shape} / ids {work.ids.shape} do not fit a step of "
                         f"[*, {size}, {size}, 3] crops and [*, {length}] ids")
      batch["crops"][c:c + k] = work.crops
      batch["crop_owner"][c:c + k] = slot
      batch["ids"][s:s + m] = work.ids
      batch["sentence_owner"][s:s + m] = slot
      c, s = c + k, s + m
    return batch

  def _dispatch(self, works: list[ImageWork]):
    batch = sharding.make_global_batch(self._assemble(works), self.mesh)
    return self._step(self._params, batch["crops"], batch["crop_owner"], batch["ids"],
                      batch["sentence_owner"])

  @staticmethod
  def _unpack(works: list[ImageWork], outputs) -> Iterator[Match]:
    best, score = (np.asarray(x) for x in jax.device_get(outputs))
    c = s = 0
    for work in works:
      k, m = len(work.crops), len(work.ids)
      yield Match(work, best[s:s + m] - c, score[s:s + m])
      c, s = c + k, s + m

  def match(self, works: Iterable[ImageWork]) -> Iterator[Match]:
    """Matches of `works`, in order; one step in flight while the next is packed."""
    pending = None
    for step_works in pack(works, self.crop_batch, self.text_batch):
      outputs = self._dispatch(step_works)
      if pending is not None:
        yield from self._unpack(*pending)
      pending = (step_works, outputs)
    if pending is not None:
      yield from self._unpack(*pending)
