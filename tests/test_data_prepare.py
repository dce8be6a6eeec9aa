"""Every converter end to end on its `photos` fixture: raw layout -> ArrayRecord -> decoded record.

References are independent of the converter: the fixture writer's own list of what it wrote
(`FixtureEntry`), plain sentence splitting of our plain captions, PIL on the stored JPEG, numpy.
"""
import io
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from goal_jax.data import builder, photos, prepare, records
from goal_jax.text import tokenizer

SHORT_SIDE = 48  # stored images; the fixture's raw images have short side 64
DATASET = {"docci": "docci", "dci": "dci", "urban1k": "urban1k", "sharegpt4v": "sharegpt4v",
           "coco_karpathy": "coco_karpathy", "flickr30k_karpathy": "flickr30k_karpathy",
           "goal_json": "goal_json"}


def _expected_stored_size(height, width, short_side):
  if min(height, width) <= short_side:
    return height, width
  if height <= width:
    return short_side, round(width * short_side / height)
  return round(height * short_side / width), short_side


def _sentence_key(text):
  return text.strip().rstrip(".")


def _check_record(record, dataset, entry):
  assert tuple(record) == records.FIELDS
  assert record["id"] == f"{dataset}/{entry.id}"
  caption = tokenizer.normalize_text(entry.caption)
  assert record["caption"] == caption
  # Offsets slice the caption into the sentences we wrote (plain '. '-separated text).
  sliced = [caption[s:e].strip() for s, e in zip(record["sentence_starts"],
                                                  record["sentence_ends"])]
  assert sliced == photos.sentences(caption)
  assert record["splitter"].startswith("sentencex@")
  summary = tokenizer.normalize_text(entry.summary) if entry.summary else sliced[0]
  assert record["summary"] == summary
  assert record["extra_captions"] == [tokenizer.normalize_text(c) for c in entry.extra_captions]
  assert tuple(record["original_size"]) == entry.size
  image = Image.open(io.BytesIO(record["image"]))
  assert image.format == "JPEG"
  assert (image.height, image.width) == _expected_stored_size(*entry.size, SHORT_SIDE)
  assert not record["source"].startswith("/") and record["source"]
  assert len(record["pair_sentence"]) == len(entry.local_pairs)
  for k, pair in enumerate(entry.local_pairs):
    assert _sentence_key(sliced[record["pair_sentence"][k]]) == _sentence_key(pair.sentence)
    np.testing.assert_allclose(record["pair_box"][k], pair.box)
    assert record["pair_score"][k] == pytest.approx(pair.score)
    assert record["pair_is_full_image"][k] == pair.is_full_image
  assert record["pair_box"].shape == (len(entry.local_pairs), 4)
  assert record["pair_box"].dtype == np.float32 and record["pair_sentence"].dtype == np.int32
  assert record["pair_is_full_image"].dtype == bool
  assert record["sentence_starts"].dtype == np.int32


@pytest.fixture(scope="module", params=photos.FORMATS)
def prepared(request, tmp_path_factory):
  root = tmp_path_factory.mktemp(f"raw_{request.param}")
  entries = photos.write_raw_layout(request.param, root, short_side=64)
  data_dir = tmp_path_factory.mktemp(f"shards_{request.param}")
  summary = prepare.prepare(DATASET[request.param], data_dir, root, image_short_side=SHORT_SIDE,
                            num_workers=2, verbose=False)
  return DATASET[request.param], entries, data_dir, summary


def test_converter_round_trip(prepared):
  dataset, entries, data_dir, summary = prepared
  splits = {s for e in entries for s in e.splits}
  assert set(summary["splits"]) == splits
  for split in splits:
    expected = [e for e in entries if split in e.splits]
    source = builder.load_source(dataset, split, data_dir)
    assert len(source) == len(expected) == summary["splits"][split]["written"]
    raw = source[0]
    assert isinstance(raw["caption"], bytes)  # documented: TFDS gives str fields as bytes
    for index, entry in enumerate(expected):  # records keep the reader's order
      _check_record(builder.decode_record(source[index]), dataset, entry)


def test_summary_counts(prepared):
  dataset, entries, data_dir, summary = prepared
  tok = tokenizer.get_tokenizer()
  for split, counts in summary["splits"].items():
    captions = [tokenizer.normalize_text(e.caption) for e in entries if split in e.splits]
    num_sentences = np.array([len(photos.sentences(c)) for c in captions])
    num_tokens = tok(captions, context_length=1000).lengths
    assert counts["skipped"] == {}
    assert counts["sentences_per_caption"]["mean"] == pytest.approx(num_sentences.mean())
    assert counts["sentences_per_caption"]["max"] == num_sentences.max()
    assert counts["tokens_per_caption"]["mean"] == pytest.approx(num_tokens.mean())
    assert counts["tokens_per_caption"]["max"] == num_tokens.max()
    assert counts["tokens_per_caption"]["p95"] == pytest.approx(np.percentile(num_tokens, 95))
    assert counts["truncated_share"] == 0.0
  stored = builder.prepared_metadata(dataset, data_dir)
  assert stored["reports"] == json.loads(json.dumps(summary["splits"]))
  assert stored["options"]["image_short_side"] == SHORT_SIDE


def test_sharegpt4v_empty_train_split_is_dropped(tmp_path):
  photos.write_raw_layout("sharegpt4v", tmp_path / "raw", short_side=64)
  summary = prepare.prepare("sharegpt4v", tmp_path / "out", tmp_path / "raw",
                            image_short_side=SHORT_SIDE, verbose=False)
  assert summary["dropped_empty"] == ["train"] and list(summary["splits"]) == ["test"]


# --- bad input ---------------------------------------------------------------------------------


def _docci(tmp_path):
  root = tmp_path / "raw"
  photos.write_raw_layout("docci", root, short_side=64)
  path = root / "docci_descriptions.jsonlines"
  return root, path, [json.loads(line) for line in path.read_text().splitlines()]


def _write_lines(path, lines):
  path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def _set_description(value):
  def mutate(root, lines):
    lines[1]["description"] = value
  return mutate


def _truncate_image(root, lines):
  path = root / "images" / "train_00001.jpg"
  path.write_bytes(path.read_bytes()[:200])


def _duplicate(root, lines):
  lines.insert(2, dict(lines[1]))


BAD_CASES = {
    records.MISSING_IMAGE: lambda root, lines: (root / "images" / "train_00001.jpg").unlink(),
    records.CORRUPT_IMAGE: _truncate_image,
    records.EMPTY_CAPTION: _set_description("  \n "),
    records.SENTENCE_TOO_LONG: _set_description("word " * 300 + "end."),
    records.DUPLICATE_ID: _duplicate,
    records.WRONG_FIELD_TYPE: _set_description(7),
}


@pytest.mark.parametrize("reason", list(BAD_CASES))
def test_bad_input_raises_naming_record_and_file(tmp_path, reason):
  root, path, lines = _docci(tmp_path)
  BAD_CASES[reason](root, lines)
  _write_lines(path, lines)
  with pytest.raises(records.BadRecordError) as info:
    prepare.prepare("docci", tmp_path / "out", root, splits=["train"],
                    image_short_side=SHORT_SIDE, verbose=False)
  error = info.value
  assert error.reason == reason and error.dataset == "docci"
  assert error.record_id == "train_00001"
  assert "docci_descriptions.jsonlines" in error.file
  assert "train_00001" in str(error) and "docci_descriptions.jsonlines" in str(error)


def test_no_sentence_is_an_error(tmp_path):
  root, path, lines = _docci(tmp_path)
  _set_description(" . . .")(root, lines)
  _write_lines(path, lines)
  with pytest.raises(records.BadRecordError, match="train_00001") as info:
    prepare.prepare("docci", tmp_path / "out", root, splits=["train"], splitter="goal",
                    image_short_side=SHORT_SIDE, verbose=False)
  assert info.value.reason == records.NO_SENTENCE


def test_skip_bad_counts_every_reason(tmp_path):
  root, path, lines = _docci(tmp_path)
  lines[0]["description"] = 7  # train_00000: wrong type
  (root / "images" / "train_00001.jpg").unlink()  # missing image
  lines.insert(3, dict(lines[2]))  # train_00002 twice
  test = [i for i, x in enumerate(lines) if x["split"] == "test"]
  lines[test[0]]["description"] = "word " * 300 + "end."
  (root / "images" / "test_00001.jpg").write_bytes(b"not an image at all")
  _write_lines(path, lines)
  summary = prepare.prepare("docci", tmp_path / "out", root, splits=["train", "test"],
                            image_short_side=SHORT_SIDE, skip_bad=True, verbose=False)
  train, test = summary["splits"]["train"], summary["splits"]["test"]
  assert train["skipped"] == {records.WRONG_FIELD_TYPE: 1, records.MISSING_IMAGE: 1,
                              records.DUPLICATE_ID: 1}
  assert train["written"] == 4 - 2  # of 4 train photos, 2 bad (the duplicate is extra)
  assert test["skipped"] == {records.SENTENCE_TOO_LONG: 1, records.CORRUPT_IMAGE: 1}
  assert test["written"] == 1
  assert train["skipped_examples"][records.MISSING_IMAGE][0].startswith("train_00001 (")
  assert len(builder.load_source("docci", "train", tmp_path / "out")) == 2
  assert "skipped 1 (duplicate_id)" in prepare.format_summary(summary)


def _goal_training(tmp_path, mutate):
  root = tmp_path / "raw"
  photos.write_raw_layout("goal_json", root, short_side=64)
  path = root / "datasets" / "DCI_segment_sim_bbox_del_org.json"
  data = json.loads(path.read_text())
  mutate(data[1]["segment"][0])
  path.write_text(json.dumps(data))
  return root


@pytest.mark.parametrize("reason, mutate", [
    (records.BOX_OUTSIDE_IMAGE, lambda s: s["bbox_coordinates"].update(x2=10_000)),
    (records.UNMATCHED_SENTENCE, lambda s: s.update(caption="A sentence the caption lacks")),
    (records.WRONG_FIELD_TYPE, lambda s: s.update(similarity_score="high")),
])
def test_bad_local_pairs(tmp_path, reason, mutate):
  root = _goal_training(tmp_path, mutate)
  kwargs = dict(splits=["dci_train"], image_short_side=SHORT_SIDE, verbose=False)
  with pytest.raises(records.BadRecordError, match="chelsea") as info:
    prepare.prepare("goal_json", tmp_path / "out", root, **kwargs)
  assert info.value.reason == reason
  assert "DCI_segment_sim_bbox_del_org.json" in str(info.value)
  summary = prepare.prepare("goal_json", tmp_path / "out", root, skip_bad=True, **kwargs)
  assert summary["splits"]["dci_train"]["skipped"] == {reason: 1}
  assert summary["splits"]["dci_train"]["written"] == len(photos.PHOTOS) - 1


def test_box_within_one_pixel_is_clipped(tmp_path):
  root = _goal_training(tmp_path, lambda s: s["bbox_coordinates"].update(x1=-1))
  prepare.prepare("goal_json", tmp_path / "out", root, splits=["dci_train"],
                  image_short_side=SHORT_SIDE, verbose=False)
  record = builder.decode_record(builder.load_source("goal_json", "dci_train",
                                                     tmp_path / "out")[1])
  assert record["pair_box"][0, 0] == 0.0


def test_load_source_names_missing_dataset(tmp_path):
  with pytest.raises(FileNotFoundError, match="goal_jax.data.prepare urban1k"):
    builder.load_source("urban1k", "test", tmp_path)


def test_cli(tmp_path):
  photos.write_raw_layout("urban1k", tmp_path / "raw", short_side=64)
  result = subprocess.run(
      [sys.executable, "-m", "goal_jax.data.prepare", "urban1k", f"--manual_dir={tmp_path / 'raw'}",
       f"--data_dir={tmp_path / 'out'}", f"--image_short_side={SHORT_SIDE}",
       f"--summary_json={tmp_path / 'summary.json'}"],
      capture_output=True, text=True, cwd=pathlib.Path(__file__).parents[1], timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "test: 10 records" in result.stdout
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["splits"]["test"]["written"] == 10
  assert math.isclose(summary["splits"]["test"]["truncated_share"], 0.0)


@pytest.mark.parametrize("workers", [1, 3])
def test_ordered_map_keeps_order_bounds_the_window_and_defers_errors(workers):
  import threading  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  started, lock = [], threading.Lock()

  def task(i):
    with lock:
      started.append(i)
    time.sleep(0.002 * ((7 * i) % 5))  # finish out of order
    if i == 4:
      raise ValueError("task 4 failed")
    return i * i

  futures = builder.ordered_map((lambda i=i: task(i) for i in range(20)), workers)
  first = next(futures)
  assert first.result() == 0
  # A bounded window: only a few tasks ahead of the consumer were submitted.
  assert len(started) <= (4 * workers if workers > 1 else 1)
  results = [first.result()]
  for future in futures:
    try:
      results.append(future.result())
    except ValueError as e:
      results.append(str(e))
  assert results == [i * i if i != 4 else "task 4 failed" for i in range(20)]
  assert sorted(started) == list(range(20))
