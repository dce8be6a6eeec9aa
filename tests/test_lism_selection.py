"""LISM candidates (area filter, dedupe, full image first, box mapping) and pair selection."""
import numpy as np
import pytest

from goal_jax.lism import segmenters
from goal_jax.lism import selection

Seg = segmenters.Segmentation


def test_area_filter_keeps_one_to_eighty_percent_inclusive():
  # Stored image 100 x 200 (h x w) = 20,000 px: 1 % = 200 px, 80 % = 16,000 px. Original = stored.
  boxes = [(0, 0, 10, 19.9),   # 199 px: too small
           (0, 0, 10, 20),     # 200 px: kept (the bound is inclusive)
           (0, 0, 160, 100),   # 16,000 px: kept
           (0, 0, 161, 100),   # 16,100 px: too large
           (5, 5, 5, 50)]      # empty
  out, capped = selection.candidate_boxes(Seg(np.array(boxes, np.float32)), (100, 200),
                                          (100, 200))
  np.testing.assert_array_equal(out, [[0, 0, 200, 100], [0, 0, 10, 20], [0, 0, 160, 100]])
  assert capped == 0


def test_mask_areas_decide_over_box_areas():
  # Same two 50 x 50 boxes (12.5 % of 100 x 200); their masks cover 150 px (0.75 %) and 5,000 px.
  boxes = np.array([(0, 0, 50, 50), (100, 0, 150, 50)], np.float32)
  out, _ = selection.candidate_boxes(Seg(boxes, np.array([150, 5000], np.float32)), (100, 200),
                                     (100, 200))
  np.testing.assert_array_equal(out, [[0, 0, 200, 100], [100, 0, 150, 50]])


def test_identical_boxes_once_in_first_order_and_full_image_first():
  boxes = np.array([(20, 0, 60, 40), (0, 0, 40, 40), (20, 0, 60, 40), (0, 0, 40, 40),
                    (10, 10, 50, 50)], np.float32)
  out, _ = selection.candidate_boxes(Seg(boxes), (100, 100), (100, 100))
  np.testing.assert_array_equal(out, [[0, 0, 100, 100], [20, 0, 60, 40], [0, 0, 40, 40],
                                      [10, 10, 50, 50]])


def test_boxes_map_from_stored_to_original_pixels_exactly():
  # Stored 48 x 64 (h x w) copy of a 100 x 133 original: x scales by 133/64, y by 100/48.
  boxes = np.array([(8, 6, 40, 30)], np.float32)
  out, _ = selection.candidate_boxes(Seg(boxes), (48, 64), (100, 133))
  expected = np.array([8 * 133 / 64, 6 * 100 / 48, 40 * 133 / 64, 30 * 100 / 48], np.float32)
  np.testing.assert_array_equal(out[0], [0, 0, 133, 100])
  np.testing.assert_array_equal(out[1], expected)  # 16.625, 12.5, 83.125, 62.5
  np.testing.assert_array_equal(out[1], [16.625, 12.5, 83.125, 62.5])


def test_boxes_already_in_original_pixels_are_not_rescaled():
  boxes = np.array([(10, 20, 50, 60)], np.float32)  # 1,600 of 96 x 96 = 17 %
  out, _ = selection.candidate_boxes(Seg(boxes, in_original=True), (48, 48), (96, 96))
  np.testing.assert_array_equal(out, [[0, 0, 96, 96], [10, 20, 50, 60]])


def test_boxes_are_clipped_to_the_image():
  out, _ = selection.candidate_boxes(Seg(np.array([(-5, -5, 30, 30)], np.float32)), (50, 50),
                                     (50, 50))
  np.testing.assert_array_equal(out[1], [0, 0, 30, 30])


def test_max_candidates_caps_in_segmenter_order_and_counts():
  boxes = np.array([(0, 0, 20 + i, 20) for i in range(5)], np.float32)
  options = selection.CandidateOptions(max_candidates=2)
  out, capped = selection.candidate_boxes(Seg(boxes), (100, 100), (100, 100), options)
  np.testing.assert_array_equal(out, [[0, 0, 100, 100], [0, 0, 20, 20], [0, 0, 21, 20]])
  assert capped == 3


def test_bad_options_and_areas_fail_clearly():
  with pytest.raises(ValueError, match="min_area <= max_area"):
    selection.CandidateOptions(min_area=0.5, max_area=0.1)
  with pytest.raises(ValueError, match="is not one of"):
    selection.SelectionOptions(mode="best")
  with pytest.raises(ValueError, match="2 boxes but"):
    selection.candidate_boxes(Seg(np.zeros((2, 4), np.float32), np.zeros(3, np.float32)),
                              (10, 10), (10, 10))


# Sentence matches of one image: sentence j matched candidate BEST[j] with score SCORE[j];
# candidate 0 is the full image.
BEST = np.array([0, 2, 1, 3, 2])
SCORE = np.array([30.0, 25.0, 28.0, 26.0, 25.0], np.float32)


@pytest.mark.parametrize("mode, keep_full, top_k, expected", [
    ("max", False, 3, [2]),              # GOAL: sentence 0 (full image, 30) dropped; best left 28
    ("max", True, 3, [0]),               # joint test set: the full-image match is the best
    ("topk", False, 2, [2, 3]),
    ("topk", False, 9, [2, 3, 1, 4]),    # fewer eligible than k; tie 25/25 -> earlier sentence
    ("all", False, 3, [2, 3, 1, 4]),
    ("all", True, 3, [0, 2, 3, 1, 4]),
])
def test_select_hand_cases(mode, keep_full, top_k, expected):
  rule = selection.SelectionOptions(mode, top_k, keep_full)
  np.testing.assert_array_equal(selection.select(BEST, SCORE, rule), expected)


def test_image_whose_sentences_all_match_the_full_image_gets_no_pair_unless_kept():
  best, score = np.zeros(3, int), np.array([5.0, 9.0, 7.0], np.float32)
  assert selection.select(best, score).size == 0
  np.testing.assert_array_equal(
      selection.select(best, score, selection.SelectionOptions(keep_full_image=True)), [1])


def test_pairs_fields_take_box_score_and_full_image_flag_of_the_match():
  boxes = np.array([(0, 0, 100, 80), (10, 10, 40, 40), (50, 0, 100, 30), (0, 40, 30, 80)],
                   np.float32)
  rule = selection.SelectionOptions("topk", 2, keep_full_image=True)
  got = selection.pairs(BEST, SCORE, boxes, rule)
  np.testing.assert_array_equal(got["pair_sentence"], [0, 2])
  np.testing.assert_array_equal(got["pair_box"], [boxes[0], boxes[1]])
  np.testing.assert_array_equal(got["pair_score"], [30.0, 28.0])
  np.testing.assert_array_equal(got["pair_is_full_image"], [True, False])
  assert got["pair_sentence"].dtype == np.int32 and got["pair_box"].dtype == np.float32
  empty = selection.pairs(np.zeros(2, int), np.ones(2, np.float32), boxes[:1])
  assert empty["pair_box"].shape == (0, 4) and empty["pair_is_full_image"].dtype == bool
  # Mined pairs carry no hard negatives: the source's belonged to its own pairs.
  assert got["pair_hard_negatives"] == []
  np.testing.assert_array_equal(got["pair_hard_negative_count"], [0, 0])
