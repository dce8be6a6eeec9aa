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

from goal_jax import files
from goal_jax.data import builder, images, photos, prepare, raw, records
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
  # The detail copy (local crops, LISM) holds the original pixels, as tiles, for every format.
  assert tuple(record["detail_layout"]) == (*entry.size, images.DETAIL_TILE)
  detail = images.decode_detail(record["detail_tiles"], record["detail_layout"])
  assert (detail.height, detail.width) == entry.size
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
  with pytest.raises(FileNotFoundError, match="goal_jax.prepare --dataset=urban1k"):
    builder.load_source("urban1k", "test", tmp_path)


def _prepare_command(*flags):
  return subprocess.run([sys.executable, "-m", "goal_jax.prepare", *flags],
                        capture_output=True, text=True, cwd=pathlib.Path(__file__).parents[1],
                        timeout=300)


def test_cli(tmp_path):
  photos.write_raw_layout("urban1k", tmp_path / "raw", short_side=64)
  result = _prepare_command("--dataset=urban1k", f"--manual_dir={tmp_path / 'raw'}",
                            f"--data_dir={tmp_path / 'out'}", f"--image_short_side={SHORT_SIDE}",
                            f"--summary_out={tmp_path / 'summary.json'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "test: 10 records" in result.stdout
  # Quiet: no TFDS download banner (nothing is downloaded), no absl/Orbax INFO lines; the
  # progress bar has its total.
  output = result.stdout + result.stderr
  assert "Downloading and preparing" not in output and "downloaded and prepared" not in output
  assert not [line for line in output.splitlines() if line.startswith("I") and "] " in line]
  assert "INFO" not in output
  assert "10/10" in result.stderr
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["splits"]["test"]["written"] == 10
  assert math.isclose(summary["splits"]["test"]["truncated_share"], 0.0)


def test_cli_bad_record_is_one_error_line(tmp_path):
  root, _, _ = _docci(tmp_path)
  (root / "images" / "train_00001.jpg").unlink()
  result = _prepare_command("--dataset=docci", f"--manual_dir={root}",
                            f"--data_dir={tmp_path / 'out'}", "--split=train")
  assert result.returncode == 1
  assert "Traceback" not in result.stderr + result.stdout
  errors = [line for line in result.stderr.splitlines() if "error:" in line]
  assert len(errors) == 1, result.stderr
  error = errors[0]
  assert error.startswith("error: docci: record 'train_00001'")
  assert "docci_descriptions.jsonlines" in error and "--skip_bad" in error


@pytest.mark.parametrize("flags, message", [
    (["docci"], "every option is a --flag, e.g. --dataset=docci"),
    (["--dataset=docci", "--num_workers=2"], "num_workers"),
    ([], "--dataset is required"),
])
def test_cli_command_line_mistakes_exit_2(flags, message):
  result = _prepare_command(*flags)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
  assert result.stderr.startswith("error: ") and message in result.stderr


def test_progress_total_is_counted_where_cheap(tmp_path):
  photos.write_raw_layout("docci", tmp_path / "docci", short_side=64)
  photos.write_raw_layout("dci", tmp_path / "dci", short_side=64)
  for name, manual_dir in (("docci", tmp_path / "docci"), ("dci", tmp_path / "dci"),
                           ("photos", None)):
    reader = raw.get_reader(name)
    for split in reader.available_splits(manual_dir):
      expected = sum(1 for _ in reader.read(manual_dir, split))
      assert reader.count_entries(manual_dir, split) == expected, (name, split)
  synthetic = raw.get_reader("synthetic")
  for version in (1, 2):
    options = dict(seed=0, version=version, num_examples=7)  # test_hard: groups of 4
    assert synthetic.count_entries(None, "test_hard", **options) == sum(
        1 for _ in synthetic.read(None, "test_hard", **options))
  assert synthetic.count_entries(None, "train", seed=0, version=2) == 3000
  assert raw.get_reader("sharegpt4v").count_entries(tmp_path, "test") is None


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


# --- re-preparing: the earlier shards survive a failure, other splits are kept -----------------


def _snapshot(data_dir):
  """Every file under `data_dir` with its bytes: the reference for "left as it was"."""
  return {p.relative_to(data_dir).as_posix(): p.read_bytes()
          for p in sorted(pathlib.Path(data_dir).rglob("*")) if p.is_file()}


def _stored_short_side(data_dir, split):
  record = builder.decode_record(builder.load_source("docci", split, data_dir)[0])
  return min(Image.open(io.BytesIO(record["image"])).size)


def test_failed_reprepare_leaves_the_earlier_shards_byte_identical(tmp_path):
  root, out = tmp_path / "raw", tmp_path / "out"
  entries = photos.write_raw_layout("docci", root, short_side=64)
  first = prepare.prepare("docci", out, root, image_short_side=SHORT_SIDE, num_workers=1,
                          verbose=False)
  assert list(first["splits"]) == ["train", "test", "test_qual", "qual_dev", "qual_test"]
  before = _snapshot(out)
  _truncate_image(root, None)  # train_00001.jpg: a corrupt image, and no --skip_bad
  with pytest.raises(records.BadRecordError, match="train_00001") as info:
    prepare.prepare("docci", out, root, image_short_side=SHORT_SIDE, num_workers=1,
                    verbose=False)
  assert info.value.reason == records.CORRUPT_IMAGE
  if sys.version_info >= (3, 11):
    assert any("--skip_bad" in note for note in info.value.__notes__)
  assert _snapshot(out) == before  # same files, same bytes; the staging folder is gone
  assert [p.name for p in (out / "docci").iterdir()] == ["1.0.0"]
  for split in first["splits"]:
    source = builder.load_source("docci", split, out)
    assert [builder.decode_record(source[i])["id"] for i in range(len(source))] == [
        f"docci/{e.id}" for e in entries if split in e.splits]


def test_failed_first_prepare_leaves_nothing(tmp_path):
  root, out = tmp_path / "raw", tmp_path / "out"
  photos.write_raw_layout("urban1k", root, short_side=64)
  (root / "Urban1k" / "image" / "3.jpg").write_bytes(b"not an image")
  with pytest.raises(records.BadRecordError, match="'3'"):
    prepare.prepare("urban1k", out, root, image_short_side=SHORT_SIDE, verbose=False)
  assert list(out.iterdir()) == []


@pytest.mark.parametrize("atomic_exchange", [True, False])
def test_reprepare_of_one_split_keeps_the_others(tmp_path, monkeypatch, atomic_exchange):
  if not atomic_exchange:  # a filesystem without renameat2: two renames
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
  root, out = tmp_path / "raw", tmp_path / "out"
  entries = photos.write_raw_layout("docci", root, short_side=64)
  prepare.prepare("docci", out, root, image_short_side=SHORT_SIDE, num_workers=1, verbose=False)
  before = _snapshot(out / "docci" / "1.0.0")
  path = root / "docci_descriptions.jsonlines"
  lines = [json.loads(line) for line in path.read_text().splitlines()]
  new_caption = "A brand new caption. It has two sentences."
  next(x for x in lines if x["example_id"] == "test_00000")["description"] = new_caption
  _write_lines(path, lines)

  result = prepare.prepare("docci", out, root, splits=["test"], image_short_side=40,
                           num_workers=1, verbose=False)
  others = ["train", "test_qual", "qual_dev", "qual_test"]
  assert list(result["splits"]) == ["test"] and result["kept_splits"] == others
  assert result["kept_with_other_options"] == {s: {"image_short_side": [SHORT_SIDE, 40]}
                                              for s in others}
  after = _snapshot(out / "docci" / "1.0.0")
  for split in others:  # the kept shards and id lists are the very same bytes
    for name in before:
      if name.startswith(f"docci-{split}."):
        assert after[name] == before[name], name
  assert not list(out.glob("docci/.preparing-*"))
  for split in others:
    source = builder.load_source("docci", split, out)
    expected = [e for e in entries if split in e.splits]
    assert len(source) == len(expected)
    for index, entry in enumerate(expected):
      _check_record(builder.decode_record(source[index]), "docci", entry)
  test = builder.load_source("docci", "test", out)
  assert builder.decode_record(test[0])["caption"] == new_caption
  assert builder.decode_record(test[1])["id"] == "docci/test_00001"
  assert _stored_short_side(out, "test") == 40 and _stored_short_side(out, "train") == SHORT_SIDE
  metadata = builder.prepared_metadata("docci", out)
  assert set(metadata["reports"]) == {"test", *others}
  assert metadata["split_options"]["train"]["options"]["image_short_side"] == SHORT_SIDE
  assert metadata["split_options"]["test"]["options"]["image_short_side"] == 40
  text = prepare.format_summary(result)
  assert "kept from the earlier preparation (not prepared again): train, test_qual" in text
  assert "image_short_side 48 (now 40)" in text


# --- text that is not UTF-8, bare carriage returns ---------------------------------------------


def _chelsea_not_utf8(root):
  """Writes a Latin-1 byte into every raw file holding the `chelsea` caption; returns them."""
  changed = []
  for path in sorted(p for p in root.rglob("*") if p.suffix in (".json", ".jsonlines", ".txt")):
    data = path.read_bytes()
    if b"tabby cat" in data:
      path.write_bytes(data.replace(b"tabby cat", b"tabb\xe9 cat"))
      changed.append(path.name)
  return changed


@pytest.mark.parametrize("format_name", photos.FORMATS)
def test_caption_not_utf8_is_a_named_bad_record(tmp_path, format_name):
  root = tmp_path / "raw"
  entries = photos.write_raw_layout(format_name, root, short_side=64)
  chelsea = next(e for e in entries if e.photo.name == "chelsea")
  split = chelsea.splits[0]
  changed = _chelsea_not_utf8(root)
  assert changed
  kwargs = dict(splits=[split], image_short_side=SHORT_SIDE, num_workers=1, verbose=False)
  with pytest.raises(records.BadRecordError) as info:
    prepare.prepare(DATASET[format_name], tmp_path / "out", root, **kwargs)
  error = info.value
  assert error.reason == records.NOT_UTF8 and error.record_id == chelsea.id
  assert any(name in error.file for name in changed), (error.file, changed)
  assert "\\xe9" in str(error) and "tabb\\xe9 cat" in str(error)
  summary = prepare.prepare(DATASET[format_name], tmp_path / "out", root, skip_bad=True,
                            **kwargs)
  counts = summary["splits"][split]
  assert counts["skipped"] == {records.NOT_UTF8: 1}
  assert counts["written"] == sum(split in e.splits for e in entries) - 1


def test_bare_carriage_return_keeps_the_whole_caption(tmp_path):
  root = tmp_path / "raw"
  photos.write_raw_layout("urban1k", root, short_side=64)
  (root / "Urban1k" / "caption" / "1.txt").write_bytes(
      b"A red door.\rIt has a brass knob.\r\nA second line that readers must ignore.\r\n")
  prepare.prepare("urban1k", tmp_path / "out", root, image_short_side=SHORT_SIDE, verbose=False)
  record = builder.decode_record(builder.load_source("urban1k", "test", tmp_path / "out")[0])
  assert record["caption"] == "A red door. It has a brass knob."
  assert [record["caption"][s:e] for s, e in zip(record["sentence_starts"],
                                                 record["sentence_ends"])] == [
      "A red door.", "It has a brass knob."]


# --- image paths that leave the manual dir ------------------------------------------------------


@pytest.mark.parametrize("image_file", ["ABSOLUTE", "../outside.jpg", "sub/../../outside.jpg"])
def test_image_path_outside_the_manual_dir_is_refused(tmp_path, image_file):
  root, path, lines = _docci(tmp_path)
  outside = tmp_path / "outside.jpg"  # a good image: reading it would succeed
  outside.write_bytes((root / "images" / "train_00001.jpg").read_bytes())
  image_file = str(outside) if image_file == "ABSOLUTE" else image_file
  lines[1]["image_file"] = image_file
  _write_lines(path, lines)
  kwargs = dict(splits=["train"], image_short_side=SHORT_SIDE, num_workers=1, verbose=False)
  with pytest.raises(records.BadRecordError) as info:
    prepare.prepare("docci", tmp_path / "out", root, **kwargs)
  error = info.value
  assert error.reason == records.PATH_OUTSIDE_DATASET and error.record_id == "train_00001"
  assert error.file.endswith("docci_descriptions.jsonlines:2")
  assert image_file in str(error) and "--skip_bad" in str(error)
  summary = prepare.prepare("docci", tmp_path / "out", root, skip_bad=True, **kwargs)
  assert summary["splits"]["train"]["skipped"] == {records.PATH_OUTSIDE_DATASET: 1}
  assert summary["splits"]["train"]["written"] == 3
  ids = [builder.decode_record(r)["id"] for r in builder.load_source("docci", "train",
                                                                     tmp_path / "out")]
  assert ids == ["docci/train_00000", "docci/train_00002", "docci/train_00003"]


# --- the same image id in two splits ------------------------------------------------------------


def test_image_id_in_two_splits_is_a_warning(tmp_path):
  root, path, lines = _docci(tmp_path)
  test_line = next(x for x in lines if x["example_id"] == "test_00001")
  test_line["example_id"] = "train_00002"  # the same id in train and test
  _write_lines(path, lines)
  out = tmp_path / "out"
  kwargs = dict(image_short_side=SHORT_SIDE, num_workers=1, verbose=False)
  result = prepare.prepare("docci", out, root, **kwargs)
  # test_qual holds test by design: only its overlap with train counts.
  assert result["shared_ids"] == {"count": 1, "pairs": {"train/test": 1, "train/test_qual": 1},
                                  "examples": ["docci/train_00002"], "unchecked": []}
  assert ("  warning: 1 image ids appear in more than one split (train/test: 1, "
          "train/test_qual: 1), e.g. docci/train_00002") in prepare.format_summary(result)
  # Preparing test alone compares it with the splits kept on disk (their id lists).
  again = prepare.prepare("docci", out, root, splits=["test"], **kwargs)
  assert again["shared_ids"]["pairs"] == {"train/test": 1, "train/test_qual": 1}
  (out / "docci" / "1.0.0" / "docci-train.ids.json").unlink()  # as if prepared before id lists
  third = prepare.prepare("docci", out, root, splits=["test"], **kwargs)
  assert third["shared_ids"] == {"count": 0, "pairs": {}, "examples": [], "unchecked": ["train"]}
  assert "not checked for shared ids (no id list" in prepare.format_summary(third)


def test_no_shared_ids_no_warning(tmp_path):
  photos.write_raw_layout("dci", tmp_path / "raw", short_side=64)
  result = prepare.prepare("dci", tmp_path / "out", tmp_path / "raw",
                           image_short_side=SHORT_SIDE, num_workers=1, verbose=False)
  assert set(result["splits"]) == {"train", "valid", "test", "goal_test", "full"}
  # goal_test (photos 2, 5, 8) lies in DCI's train and test: GOAL's list is not DCI's split.
  assert result["shared_ids"]["pairs"] == {"train/goal_test": 2, "test/goal_test": 1}
  result = prepare.prepare("dci", tmp_path / "out", tmp_path / "raw", splits=["train", "test"],
                           image_short_side=SHORT_SIDE, num_workers=1, verbose=False)
  assert result["shared_ids"]["count"] == 3  # against goal_test, kept on disk


def test_earlier_split_with_other_features_is_not_kept(tmp_path):
  root, out = tmp_path / "raw", tmp_path / "out"
  photos.write_raw_layout("docci", root, short_side=64)
  kwargs = dict(image_short_side=SHORT_SIDE, num_workers=1, verbose=False)
  prepare.prepare("docci", out, root, splits=["train", "test"], **kwargs)
  features = out / "docci" / "1.0.0" / "features.json"
  features.write_text(features.read_text().replace('"caption"', '"old_caption"'))
  result = prepare.prepare("docci", out, root, splits=["test"], **kwargs)
  assert result["kept_splits"] == [] and list(result["discarded_splits"]) == ["train"]
  assert "warning: earlier split train was removed" in prepare.format_summary(result)
  assert len(builder.load_source("docci", "test", out)) == 3
  with pytest.raises(ValueError, match="no prepared split 'train'"):
    builder.load_source("docci", "train", out)


def test_detail_copy_options(tmp_path):
  """`--detail_short_side` sizes the detail copy (never upscaled, aspect kept); `--nodetail`
  stores none; a detail copy smaller than the stored image is refused."""
  root = tmp_path / "raw"
  entries = {f"docci/{e.id}": e for e in photos.write_raw_layout("docci", root, short_side=64)}
  kwargs = dict(image_short_side=SHORT_SIDE, splits=["test"], num_workers=1, verbose=False)
  for options, side in (({"detail_short_side": 56}, 56), ({"detail_short_side": 1024}, None)):
    result = prepare.prepare("docci", tmp_path / str(side), root, **options, **kwargs)
    assert result["options"]["detail_short_side"] == options["detail_short_side"]
    source = builder.load_source("docci", "test", tmp_path / str(side))
    for index in range(len(source)):
      record = builder.decode_record(source[index])
      size = entries[record["id"]].size
      expected = _expected_stored_size(*size, side) if side else size
      assert tuple(record["detail_layout"][:2]) == expected
      detail = images.decode_detail(record["detail_tiles"], record["detail_layout"])
      assert (detail.height, detail.width) == expected
  prepare.prepare("docci", tmp_path / "none", root, detail=False, **kwargs)
  record = builder.decode_record(builder.load_source("docci", "test", tmp_path / "none")[0])
  assert record["detail_tiles"] == [] and tuple(record["detail_layout"]) == (0, 0, 0)
  with pytest.raises(ValueError, match="below the stored image"):
    prepare.prepare("docci", tmp_path / "bad", root, detail_short_side=40, **kwargs)
