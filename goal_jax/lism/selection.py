"""LISM's two choices, as pure numpy: which regions are candidates, and which matches become pairs.

Candidates (as GOAL's released LISM code): segments whose area is between 1 % and 80 % of the
image (both ends kept), identical boxes once, the full image first as candidate 0.

Pairs (steps 10, 13, 14): every sentence has matched its best candidate (argmax of the score over
the image's candidates, the first one on ties, so a tie goes to the full image). Then

- `max` (GOAL's training default, "only max pair"): drop full-image matches, keep the single
  highest-scoring remaining match; an image whose sentences all matched the full image gets none.
- `topk`: the `top_k` highest-scoring matches after the same drop.
- `all`: every match after the drop (the per-sentence output of GOAL's script).

`keep_full_image=True` skips the drop: GOAL's joint test set keeps full-image matches (211 of its
1,999 DCI local pairs are the full image), and `max` then always gives one pair per image (1:1).
Ties in score go to the earlier sentence.
"""
import dataclasses

import numpy as np

from goal_jax.lism import segmenters

FULL_IMAGE = 0  # candidate index of the whole image
SELECTIONS = ("max", "topk", "all")


@dataclasses.dataclass(frozen=True)
class CandidateOptions:
  """Which segments become candidates.

  Attributes:
    min_area, max_area: kept area range as a fraction of the image area (GOAL: 0.01, 0.8).
    max_candidates: at most this many segments (after filtering, in the segmenter's order) join
      the full image; bounds the work per image (SAM gives up to a few hundred masks).
  """
  min_area: float = 0.01
  max_area: float = 0.8
  max_candidates: int = 255

  def __post_init__(self):
    if not 0.0 <= self.min_area <= self.max_area <= 1.0:
      raise ValueError(f"need 0 <= min_area <= max_area <= 1, got {self.min_area}, "
                       f"{self.max_area}")
    if self.max_candidates < 0:
      raise ValueError(f"max_candidates must be >= 0, got {self.max_candidates}")


@dataclasses.dataclass(frozen=True)
class SelectionOptions:
  """Which sentence matches become the record's local pairs (module docstring)."""
  mode: str = "max"
  top_k: int = 3
  keep_full_image: bool = False

  def __post_init__(self):
    if self.mode not in SELECTIONS:
      raise ValueError(f"selection {self.mode!r} is not one of {SELECTIONS}")
    if self.top_k < 1:
      raise ValueError(f"top_k must be >= 1, got {self.top_k}")


def to_original(boxes: np.ndarray, stored_hw, original_hw) -> np.ndarray:
  """Scales boxes from stored-image pixels to original pixels (x by W ratio, y by H ratio)."""
  (sh, sw), (oh, ow) = stored_hw, original_hw
  scale = np.array([ow / sw, oh / sh, ow / sw, oh / sh], np.float64)
  return (np.asarray(boxes, np.float64) * scale).astype(np.float32)


def candidate_boxes(segmentation: segmenters.Segmentation, stored_hw, original_hw,
                    options: CandidateOptions = CandidateOptions()) -> tuple[np.ndarray, int]:
  """Candidate boxes in original pixels, the full image first; and how many segments were capped.

  Args:
    segmentation: the segmenter's output for the stored image.
    stored_hw: (height, width) of the stored image the segmenter saw.
    original_hw: (height, width) of the original image (the frame of the returned boxes).
    options: area range and cap.

  Returns:
    (float32 `[1 + K, 4]` boxes (x1, y1, x2, y2), number of segments dropped by `max_candidates`).
  """
  frame_hw = original_hw if segmentation.in_original else stored_hw
  height, width = (float(v) for v in frame_hw)
  boxes = np.asarray(segmentation.boxes, np.float64).reshape(-1, 4)
  boxes = np.clip(boxes, 0.0, [width, height, width, height])
  box_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  areas = box_areas if segmentation.areas is None else np.asarray(segmentation.areas, np.float64)
  if areas.shape != box_areas.shape:
    raise ValueError(f"segmentation has {len(box_areas)} boxes but {areas.shape} areas")
  share = areas / (height * width)
  keep = (box_areas > 0) & (share >= options.min_area) & (share <= options.max_area)
  boxes = boxes[keep]
  if not segmentation.in_original:
    boxes = to_original(boxes, stored_hw, original_hw)
  boxes = _first_of_each(boxes.astype(np.float32))
  capped = max(len(boxes) - options.max_candidates, 0)
  full = np.array([[0.0, 0.0, original_hw[1], original_hw[0]]], np.float32)
  return np.concatenate([full, boxes[:options.max_candidates]]), capped


def _first_of_each(boxes: np.ndarray) -> np.ndarray:
  """Identical rows once, at their first position."""
  if not len(boxes):
    return boxes
  _, first = np.unique(boxes, axis=0, return_index=True)
  return boxes[np.sort(first)]


def select(best_candidate, best_score, options: SelectionOptions = SelectionOptions()
           ) -> np.ndarray:
  """Sentence indices that become pairs, best score first (module docstring).

  Args:
    best_candidate: int `[M]`: each sentence's argmax candidate (0 = full image).
    best_score: float `[M]`: its score.
    options: the selection rule.
  """
  best_candidate = np.asarray(best_candidate)
  best_score = np.asarray(best_score, np.float32)
  eligible = np.arange(len(best_candidate))
  if not options.keep_full_image:
    eligible = eligible[best_candidate != FULL_IMAGE]
  order = eligible[np.argsort(-best_score[eligible], kind="stable")]
  count = {"max": 1, "topk": options.top_k, "all": len(order)}[options.mode]
  return order[:count]


def pairs(best_candidate, best_score, boxes, options: SelectionOptions = SelectionOptions()
          ) -> dict[str, np.ndarray]:
  """The record's local-pair fields (DESIGN.md) from one image's sentence matches."""
  chosen = select(best_candidate, best_score, options)
  candidates = np.asarray(best_candidate)[chosen]
  return {
      "pair_sentence": chosen.astype(np.int32),
      "pair_box": np.asarray(boxes, np.float32).reshape(-1, 4)[candidates],
      "pair_score": np.asarray(best_score, np.float32)[chosen],
      "pair_is_full_image": candidates == FULL_IMAGE,
      "pair_norm_size": np.zeros((len(chosen), 2), np.float32),  # mined boxes: no JSON size
      # Mined pairs have no hard negatives (the source's belonged to its own pairs).
      "pair_hard_negatives": [],
      "pair_hard_negative_count": np.zeros((len(chosen),), np.int32),
  }
