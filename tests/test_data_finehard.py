"""The FineHARD reader on a small file in the released format (`fgclip/train/train_fgclip.py`'s
keys), through preparation and the pipeline's regions."""
import json

import numpy as np
from PIL import Image
import pytest

from goal_jax.data import builder, pipeline, prepare, records
from goal_jax.data.raw import READERS
from goal_jax.text import tokenizer as text_tokenizer

PREFIX = "grit-20m/data-12m/"  # in the released f_path; the loader strips it

NEGS = {f"neg_{k}": f"a {colour} car" for k, colour in enumerate(
    ("blue", "green", "black", "white", "yellow", "pink", "grey", "brown", "orange", "purple"))}


def _entries():
  return [
      {"f_path": PREFIX + "coyo_image_0/00000/000000001.jpg",
       "caption": "A red car is parked by a wooden fence. The sky is clear",
       "short_caption": "a car by a fence",
       "bbox_info": [
           {"bbox": [0.1, 0.5, 0.6, 1.0, 0.93], "short_expr": "a red car",
            "long_expr": "a small red car with round headlights", "flag_short_neg": 1,
            "short_expr_negs": {**NEGS, "neg_same": "A red car"}},  # the positive: dropped
           {"bbox": [0.0, 0.0, 1.0, 0.4, 0.55], "short_expr": "the sky",
            "long_expr": "a clear blue sky", "flag_short_neg": 0, "short_expr_negs": {}}]},
      {"f_path": PREFIX + "coyo_image_0/00000/000000002.jpg",
       "caption": "A dog sleeps on a rug.", "short_caption": "a dog"},
  ]


def _write(root, entries, sizes=((30, 40), (20, 20))):
  """Images as `data/convert_image_name.py` leaves them (under `grit-12m/`), and one JSON file
  under `jsonfiles/`; sizes are (height, width)."""
  for entry, (height, width) in zip(entries, sizes):
    path = root / "grit-12m" / entry["f_path"][len(PREFIX):]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (200, 30, 30)).save(path)
  (root / "jsonfiles").mkdir(exist_ok=True)
  (root / "jsonfiles" / "results_0.json").write_text(json.dumps(entries), encoding="utf-8")


def test_reader_appends_region_expressions_with_their_negatives(tmp_path):
  _write(tmp_path, _entries())
  assert READERS["finehard"].available_splits(tmp_path) == ("train",)
  first, second = READERS["finehard"].read(tmp_path, "train")
  assert first.id == "coyo_image_0/00000/000000001"
  assert first.source == "grit-12m/coyo_image_0/00000/000000001.jpg"
  assert first.summary == "a photo of a car by a fence"
  # The caption gets a period, then each expression as a sentence of its own.
  assert first.caption == ("A red car is parked by a wooden fence. The sky is clear. "
                           "a red car. the sky.")
  car, sky = first.local_pairs
  # Fractions of the 40 x 30 (w x h) image -> pixels; the fifth number is the score.
  assert car.box == pytest.approx((4.0, 15.0, 24.0, 30.0)) and car.score == pytest.approx(0.93)
  assert sky.box == pytest.approx((0.0, 0.0, 40.0, 12.0))
  assert car.sentence == "a red car."
  assert car.hard_negatives == tuple(f"{text}." for text in NEGS.values())  # "A red car" dropped
  assert sky.hard_negatives == ()
  assert second.local_pairs == () and second.caption == "A dog sleeps on a rug."


def test_prepare_and_the_pipeline_regions(tmp_path):
  raw, data_dir = tmp_path / "raw", tmp_path / "shards"
  raw.mkdir()
  _write(raw, _entries())
  summary = prepare.prepare("finehard", data_dir, raw, image_short_side=None, num_workers=1,
                            min_image_side=0, verbose=False)  # its images are 40x30 and 20x20
  assert summary["splits"]["train"]["written"] == 2
  record = builder.decode_record(builder.load_source("finehard", "train", data_dir)[0])
  sentences = [record["caption"][s:e] for s, e in
               zip(record["sentence_starts"], record["sentence_ends"])]
  assert [sentences[k] for k in record["pair_sentence"]] == ["a red car.", "the sky."]
  assert record["pair_hard_negative_count"].tolist() == [10, 0]
  config = pipeline.default_config()
  config.update(dict(image_size=32, patch_size=8, geometry="squash", fields="regions",
                     region_context=16, hard_negatives=10, max_regions=3))
  out = pipeline.process(record, config)
  np.testing.assert_allclose(out["region_box"][:2], [[0.1, 0.5, 0.6, 1.0], [0, 0, 1, 0.4]],
                             atol=1e-6)
  np.testing.assert_array_equal(out["region_valid"], [True, True, False])
  assert out["region_negative_valid"].sum(axis=1).tolist() == [10, 0, 0]
  tok = text_tokenizer.get_tokenizer()
  np.testing.assert_array_equal(out["region_text"][0], tok("a red car.", 16).ids[0])
  np.testing.assert_array_equal(out["region_negatives"][0, 3], tok("a white car.", 16).ids[0])


@pytest.mark.parametrize("mutate,reason", [
    (lambda e: e["bbox_info"][0].update(bbox=[0.6, 0.5, 0.1, 1.0]), records.BAD_BOX),
    (lambda e: e["bbox_info"][0].update(bbox=[0.1, "0.5", 0.6, 1.0]), records.WRONG_FIELD_TYPE),
    (lambda e: e["bbox_info"][0].update(short_expr_negs=["a blue car"]), records.WRONG_FIELD_TYPE),
    (lambda e: e.update(caption=" "), records.EMPTY_CAPTION),
    (None, records.MISSING_IMAGE),
])
def test_bad_entries_are_bad_records_naming_the_file(tmp_path, mutate, reason):
  entries = _entries()
  if mutate is not None:
    mutate(entries[0])
  _write(tmp_path, entries)
  if mutate is None:  # the image was never downloaded
    (tmp_path / "grit-12m" / entries[0]["f_path"][len(PREFIX):]).unlink()
  bad, good = READERS["finehard"].read(tmp_path, "train")
  assert isinstance(bad, records.BadRecord) and bad.reason == reason, bad
  assert bad.origin.endswith("results_0.json[0]") and isinstance(good, records.RawExample)


def test_a_negative_equal_to_its_sentence_is_refused_at_preparation():
  """Readers that do not filter them (FineHARD's does) get a bad record, not a contradiction."""
  pair = records.LocalPair(box=(0, 0, 4, 4), sentence="A red car.",
                           hard_negatives=("a blue car.", "A red car"))
  example = records.RawExample(id="x", image=np.zeros((8, 8, 3), np.uint8),
                               caption="A red car.", local_pairs=(pair,))
  with pytest.raises(records.BadRecordError, match="bad_hard_negative.*own sentence"):
    records.make_record(example, dataset="test", detail=False)


def test_missing_files_are_named(tmp_path):
  assert READERS["finehard"].available_splits(tmp_path) == ()
  with pytest.raises(FileNotFoundError, match="no FineHARD JSON files"):
    list(READERS["finehard"].read(tmp_path, "train"))
