"""The pipeline's `regions` field group on a hand-built record (boxes worked out by hand), and the
start-up check of a split's boxes and hard negatives."""
import numpy as np
import pytest

from goal_jax.data import pipeline, regions
from goal_jax.text import tokenizer as text_tokenizer
from test_data_pipeline import SENTENCES, _config, _hand_record

NEGATIVES = ["A blue circle is on the left.",                      # pair 0
             "A red square is in the top right corner.",           # pair 1
             "A blue square is in the bottom right corner.",
             "The start."]                                         # pair 2 (full image)


def _with_negatives(record, counts=(1, 2, 1)):
  return {**record, "pair_hard_negatives": NEGATIVES[:sum(counts)],
          "pair_hard_negative_count": np.array(counts, np.int32)}


def _regions(record, **overrides):
  options = {"fields": "regions", "region_context": 16, "hard_negatives": 3, **overrides}
  out = pipeline.process(record, _config(**options))
  return {k: v for k, v in out.items() if k.startswith("region")}


def test_regions_squash_boxes_captions_and_negatives():
  tok = text_tokenizer.get_tokenizer()
  _, record = _hand_record()
  out = _regions(_with_negatives(record))
  assert {k: (v.shape, v.dtype.name) for k, v in out.items()} == {
      "region_box": ((4, 4), "float32"), "region_text": ((4, 16), "int32"),
      "region_valid": ((4,), "bool"), "region_negatives": ((4, 3, 16), "int32"),
      "region_negative_valid": ((4, 3), "bool")}
  # Original 120 x 180 (h x w); squash keeps fractions: pair 0 x 0..60, y 0..60 -> (0, 0, 1/3,
  # 1/2); pair 1 x 120..180 -> (2/3, 0, 1, 1/2); pair 2 matched the full image: not a region.
  np.testing.assert_allclose(out["region_box"][:2], [[0, 0, 1 / 3, 0.5], [2 / 3, 0, 1, 0.5]],
                             atol=1e-6)
  np.testing.assert_array_equal(out["region_box"][2:], 0)
  np.testing.assert_array_equal(out["region_valid"], [True, True, False, False])
  np.testing.assert_array_equal(out["region_text"][:2], tok(SENTENCES[:2], 16).ids)
  np.testing.assert_array_equal(out["region_text"][2:], tok(["", ""], 16).ids)
  np.testing.assert_array_equal(out["region_negative_valid"],
                                [[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(out["region_negatives"][0, 0], tok(NEGATIVES[0], 16).ids[0])
  np.testing.assert_array_equal(out["region_negatives"][1, :2], tok(NEGATIVES[1:3], 16).ids)


def test_regions_follow_the_centre_crop_and_skip_boxes_cut_off():
  """Stored 60 x 90 -> 32 x 48, columns 8..40 kept: original x maps to x * 48 / 180 - 8, y to
  y * 32 / 120. A box at x 0..20 maps to -8..-2.7: cut off, so the next pair takes its slot."""
  _, record = _hand_record()
  record = {**record, "pair_sentence": np.array([2, 0, 1, 1], np.int32),
            "pair_box": np.array([[0, 60, 20, 120], [0, 0, 60, 60], [120, 0, 180, 60],
                                  [0, 0, 180, 120]], np.float32),
            "pair_score": np.ones(4, np.float32),
            "pair_is_full_image": np.array([False, False, False, True])}
  out = _regions(_with_negatives(record, (1, 0, 2, 1)), geometry="center_crop", max_regions=2)
  np.testing.assert_allclose(out["region_box"], [[0, 0, 0.25, 0.5], [0.75, 0, 1, 0.5]],
                             atol=1e-6)
  np.testing.assert_array_equal(out["region_valid"], [True, True])
  # The cut-off pair's negative went with it; pair 2's two negatives are the second region's.
  np.testing.assert_array_equal(out["region_negative_valid"], [[0, 0, 0], [1, 1, 0]])


def test_only_the_first_k_negatives_and_older_shards_without_the_fields():
  _, record = _hand_record()
  out = _regions(_with_negatives(record), hard_negatives=1)
  np.testing.assert_array_equal(out["region_negative_valid"], [[1], [1], [0], [0]])
  old = _regions(record)  # no hard-negative fields at all: regions, but no negatives
  np.testing.assert_array_equal(old["region_valid"], [True, True, False, False])
  assert not old["region_negative_valid"].any()
  with pytest.raises(ValueError, match="pair_hard_negative_count"):
    pipeline.process(_with_negatives(record, (1, 2, 2)), _config(fields="regions"))


def test_other_groups_are_unchanged_by_the_region_fields():
  _, record = _hand_record()
  with_fields = pipeline.process(_with_negatives(record), _config(fields="sentences,local"))
  without = pipeline.process(record, _config(fields="sentences,local"))
  assert set(with_fields) == set(without)
  for key in without:
    np.testing.assert_array_equal(with_fields[key], without[key], err_msg=key)


def _records(counts_per_record):
  """Decoded-record stand-ins: only the array fields the survey reads."""
  return [{"pair_is_full_image": np.zeros(len(c), bool),
           "pair_hard_negative_count": np.array(c, np.int32)} for c in counts_per_record]


def test_survey_and_check_name_the_missing_data_and_the_fix(tmp_path):
  found = regions.check(_records([[0, 10], [0], [3]]), dataset="finehard", split="train",
                        data_dir=tmp_path)
  assert found == regions.Survey(seen=3, with_region=3, with_negatives=2,
                                 negatives_per_pair=6.5)
  none = _records([[0, 0], [0]])
  with pytest.raises(ValueError, match=r"(?s)'docci' split 'train'.*no hard negatives.*"
                     r"--dataset=finehard --manual_dir=/path/to/FineHARD"):
    regions.check(none, dataset="docci", split="train", data_dir=tmp_path)
  with pytest.raises(ValueError, match=r"(?s)predate them.*--dataset=synthetic "
                     f"--data_dir={tmp_path}"):
    regions.check(none, dataset="synthetic", split="train", data_dir=tmp_path)
  assert regions.check(none, dataset="docci", split="train", data_dir=tmp_path,
                       hard_negatives=False).with_region == 2
  full_image_only = [{"pair_is_full_image": np.ones(1, bool)}]  # an older shard: no counts
  with pytest.raises(ValueError, match="(?s)no boxed local pairs.*goal_jax.lism"):
    regions.check(full_image_only, dataset="dci", split="train", data_dir=tmp_path)
