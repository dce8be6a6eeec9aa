"""Raw readers on the `photos` fixture layouts: ids, order, captions, summaries, boxes, errors."""
import importlib
import json
import pathlib

import pytest

from goal_jax.data import photos, records
from goal_jax.data.raw import READERS, common

FORMAT_TO_DATASET = {"docci": "docci", "dci": "dci", "urban1k": "urban1k",
                     "sharegpt4v": "sharegpt4v", "coco_karpathy": "coco_karpathy",
                     "flickr30k_karpathy": "flickr30k_karpathy", "goal_json": "goal_json"}


@pytest.fixture(scope="module", params=photos.FORMATS)
def layout(request, tmp_path_factory):
  root = tmp_path_factory.mktemp(request.param)
  entries = photos.write_raw_layout(request.param, root, short_side=64)
  return request.param, root, entries


# Modules whose SPLITS the registry repeats (so listing splits imports nothing).
SPLITS_SOURCES = {"docci": "raw.docci", "dci": "raw.dci", "urban1k": "raw.urban1k",
                  "sharegpt4v": "raw.sharegpt4v", "coco_karpathy": "raw.karpathy:COCO_SPLITS",
                  "flickr30k_karpathy": "raw.karpathy:FLICKR_SPLITS", "goal_json": "raw.goal_json",
                  "finehard": "raw.finehard", "synthetic": "synthetic", "photos": "photos"}


def test_registry_splits_match_reader_modules():
  for name, source in SPLITS_SOURCES.items():
    module_name, _, attr = source.partition(":")
    try:
      module = importlib.import_module(f"goal_jax.data.{module_name}")
    except ImportError:
      continue  # a module not written yet must not break the others
    assert READERS[name].splits == tuple(getattr(module, attr or "SPLITS")), name


def test_reader_yields_the_fixture(layout):
  format_name, root, entries = layout
  reader = READERS[FORMAT_TO_DATASET[format_name]]
  splits = sorted({s for e in entries for s in e.splits})
  assert set(splits) <= set(reader.available_splits(root))
  for split in splits:
    expected = [e for e in entries if split in e.splits]
    got = list(reader.read(root, split))
    assert all(isinstance(x, records.RawExample) for x in got), got
    assert [x.id for x in got] == [e.id for e in expected], split
    for example, entry in zip(got, expected):
      assert example.caption == entry.caption
      assert example.extra_captions == entry.extra_captions
      assert example.summary == entry.summary
      assert pathlib.Path(example.image).is_file()
      assert pathlib.Path(example.image).as_posix().endswith("/" + example.source)
      assert example.local_pairs == entry.local_pairs


def test_docci_test_qual_is_test_then_qual_test(tmp_path):
  photos.write_raw_layout("docci", tmp_path, short_side=64)
  ids = [x.id for x in READERS["docci"].read(tmp_path, "test_qual")]
  assert ids == ["test_00000", "test_00001", "test_00002", "qual_test_00000", "qual_test_00001"]


def test_urban1k_numeric_order_and_first_line(tmp_path):
  photos.write_raw_layout("urban1k", tmp_path, short_side=64)
  got = list(READERS["urban1k"].read(tmp_path, "test"))
  assert [x.id for x in got] == [str(k) for k in range(1, 11)]  # "10" last, not after "1"
  assert "must ignore" not in got[0].caption


def test_sharegpt4v_split_boundary_and_newlines(tmp_path, monkeypatch):
  from goal_jax.data.raw import sharegpt4v
  entries = photos.write_raw_layout("sharegpt4v", tmp_path, short_side=64)
  monkeypatch.setattr(sharegpt4v, "TEST_SIZE", 6)
  test = list(READERS["sharegpt4v"].read(tmp_path, "test"))
  train = list(READERS["sharegpt4v"].read(tmp_path, "train"))
  assert [x.id for x in test] == [e.id for e in entries[:6]]
  assert [x.id for x in train] == [e.id for e in entries[6:]]
  assert all("\n" not in x.caption for x in test + train)
  assert {x.source.split("/")[0] for x in test} == {"coco", "sam", "llava"}


def test_karpathy_keeps_first_five_captions(tmp_path):
  entries = photos.write_raw_layout("coco_karpathy", tmp_path, short_side=64)
  first = next(iter(READERS["coco_karpathy"].read(tmp_path, "test")))
  raw = json.loads((tmp_path / "dataset_coco.json").read_text())["images"][0]["sentences"]
  assert len(raw) == 6  # the fixture gives image 0 a sixth caption
  assert (first.caption,) + first.extra_captions == tuple(s["raw"] for s in raw[:5])
  assert first.id == entries[0].id == "391895"


def test_goal_json_pairs_use_original_pixels_not_crop_size(tmp_path):
  entries = photos.write_raw_layout("goal_json", tmp_path, short_side=64)
  example = next(iter(READERS["goal_json"].read(tmp_path, "dci_train")))
  data = json.loads((tmp_path / "datasets" / "DCI_segment_sim_bbox_del_org.json").read_text())
  segment = data[0]["segment"][0]["bbox_coordinates"]
  assert example.local_pairs[0].box == (segment["x1"], segment["y1"], segment["x2"], segment["y2"])
  # The JSON's width/height (the crop size) is kept only for reproducing GOAL's HEAD box rule.
  assert example.local_pairs[0].norm_size == (segment["height"], segment["width"])
  assert not example.local_pairs[0].sentence.endswith(".")  # GOAL strips the period
  assert example.local_pairs[-1].is_full_image  # the `original_image.jpg` segment
  assert example.id == entries[1].id == "astronaut"


def test_remap_path_takes_longest_existing_suffix(tmp_path):
  (tmp_path / "photos").mkdir()
  (tmp_path / "photos" / "sa_1.jpg").write_bytes(b"x")
  (tmp_path / "sa_1.jpg").write_bytes(b"y")
  assert common.remap_path("../DCI/photos/sa_1.jpg", tmp_path) == tmp_path / "photos" / "sa_1.jpg"
  assert common.remap_path("chage/path/sa_1.jpg", tmp_path) == tmp_path / "sa_1.jpg"
  assert common.remap_path("a\\b\\missing.jpg", tmp_path) == tmp_path / "missing.jpg"


@pytest.mark.parametrize("chunk", [3, 64, 1 << 20])
def test_iter_json_array_matches_json_load(tmp_path, monkeypatch, chunk):
  monkeypatch.setattr(common, "_CHUNK", chunk)
  value = [{"a": "é" * 40, "b": [1, 2.5, None, True]}, 123456789, "text", [], {}, -0.25e-7]
  path = tmp_path / "a.json"
  for indent in (None, 2):
    path.write_text(json.dumps(value, indent=indent, ensure_ascii=False), encoding="utf-8")
    assert list(common.iter_json_array(path)) == value
  path.write_text("[1, 2", encoding="utf-8")
  with pytest.raises(ValueError, match="not closed"):
    list(common.iter_json_array(path))


def test_wrong_field_type_is_a_bad_record_naming_the_line(tmp_path):
  photos.write_raw_layout("docci", tmp_path, short_side=64)
  path = tmp_path / "docci_descriptions.jsonlines"
  lines = path.read_text().splitlines()
  entry = json.loads(lines[0])
  entry["description"] = 7
  lines[0] = json.dumps(entry)
  path.write_text("\n".join(lines) + "\n")
  got = list(READERS["docci"].read(tmp_path, "train"))
  assert isinstance(got[0], records.BadRecord)
  assert got[0].reason == records.WRONG_FIELD_TYPE
  assert got[0].id == "train_00000" and got[0].origin.endswith("docci_descriptions.jsonlines:1")
  assert "description" in got[0].detail and all(isinstance(x, records.RawExample) for x in got[1:])


def test_dci_goal_test_names_missing_annotation(tmp_path):
  photos.write_raw_layout("dci", tmp_path, short_side=64)
  base = tmp_path / "densely_captioned_images"
  listing = json.loads((base / "DCI_test.json").read_text())
  listing.append({"filename": "x/photos/sa_999.jpg", "caption": "Not in DCI."})
  (base / "DCI_test.json").write_text(json.dumps(listing))
  got = list(READERS["dci"].read(base, "goal_test"))
  assert isinstance(got[-1], records.BadRecord) and got[-1].reason == records.MISSING_ANNOTATION
  assert got[-1].id == "sa_999" and "DCI_test.json[3]" in got[-1].origin


def test_missing_manual_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="docci_descriptions.jsonlines"):
    list(READERS["docci"].read(tmp_path, "train"))
  with pytest.raises(FileNotFoundError, match="DCI_segment_sim_bbox_del_org.json"):
    list(READERS["goal_json"].read(tmp_path, "dci_train"))
  with pytest.raises(ValueError, match="manual_dir"):
    list(READERS["urban1k"].read(None, "test"))


# --- text files: bare carriage returns, line ends, BOM -----------------------------------------


def test_bare_carriage_return_stays_in_the_caption(tmp_path):
  photos.write_raw_layout("urban1k", tmp_path / "u", short_side=64)
  captions = tmp_path / "u" / "Urban1k" / "caption"
  (captions / "1.txt").write_bytes(b"A red door.\rIt has a knob.\r\nIgnored line.\r\n")
  (captions / "2.txt").write_bytes(b"\xef\xbb\xbfWindows text.\r\nIgnored line.\r\n")
  got = list(READERS["urban1k"].read(tmp_path / "u", "test"))
  assert [x.caption for x in got[:2]] == ["A red door.\rIt has a knob.", "Windows text."]

  photos.write_raw_layout("docci", tmp_path / "d", short_side=64)
  path = tmp_path / "d" / "docci_descriptions.jsonlines"
  lines = [json.loads(line) for line in path.read_text().splitlines()]
  first = json.dumps(lines[0]).replace(lines[0]["description"], "A red door.\rIt has a knob.")
  assert "\r" in first  # a raw control character inside the JSON string
  path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join([first] + [json.dumps(x) for x in lines[1:]])
                   .encode() + b"\r\n")
  got = list(READERS["docci"].read(tmp_path / "d", "train"))
  assert all(isinstance(x, records.RawExample) for x in got)
  assert [x.caption for x in got] == ["A red door.\rIt has a knob."] + [
      x["description"] for x in lines[1:4]]
  assert got[1].origin.endswith("docci_descriptions.jsonlines:2")  # lines counted at \n

  photos.write_raw_layout("sharegpt4v", tmp_path / "s", short_side=64)
  path = tmp_path / "s" / "share-captioner_coco_lcs_sam_1246k_1107.json"
  items = json.loads(path.read_text())
  items[0]["conversations"][1]["value"] = "RAWCR"
  path.write_text(json.dumps(items).replace("RAWCR", "A red door.\rIt has a knob."))
  assert next(iter(READERS["sharegpt4v"].read(tmp_path / "s", "test"))).caption == (
      "A red door.\rIt has a knob.")


def test_not_utf8_text_reaches_make_record_as_escaped_bytes(tmp_path):
  photos.write_raw_layout("urban1k", tmp_path, short_side=64)
  (tmp_path / "Urban1k" / "caption" / "1.txt").write_bytes(b"Caf\xe9 door.\n")
  example = next(iter(READERS["urban1k"].read(tmp_path, "test")))
  assert example.caption == "Caf\udce9 door."  # no UnicodeDecodeError while reading
  with pytest.raises(records.BadRecordError) as info:
    records.make_record(example, dataset="urban1k")
  assert info.value.reason == records.NOT_UTF8 and info.value.record_id == "1"
  assert info.value.file.endswith("1.txt") and "\\xe9 near 'Caf\\xe9 door.'" in str(info.value)


# --- file names that would leave the manual dir ------------------------------------------------


def _outside_docci(root):
  path = root / "docci_descriptions.jsonlines"
  lines = [json.loads(line) for line in path.read_text().splitlines()]
  lines[1]["image_file"] = str(root.parent / "outside.jpg")
  path.write_text("".join(json.dumps(x) + "\n" for x in lines))
  return "train", "train_00001", "docci_descriptions.jsonlines:2"


def _outside_sharegpt4v(root):
  path = root / "share-captioner_coco_lcs_sam_1246k_1107.json"
  items = json.loads(path.read_text())
  items[1]["image"] = "../outside.jpg"
  path.write_text(json.dumps(items))
  return "test", items[1]["id"], "share-captioner_coco_lcs_sam_1246k_1107.json[1]"


def _outside_coco(root):
  path = root / "dataset_coco.json"
  data = json.loads(path.read_text())
  data["images"][1]["filepath"] = "val2014/../.."
  data["images"][1]["filename"] = "outside.jpg"
  path.write_text(json.dumps(data))
  return "test", "391896", "dataset_coco.json[images][1]"


def _outside_dci(root):
  path = root / "densely_captioned_images" / "splits.json"
  splits = json.loads(path.read_text())
  splits["train"][1] = "../../outside.json"
  path.write_text(json.dumps(splits))
  return "train", "outside", "splits.json[train][1]"


@pytest.mark.parametrize("format_name, mutate", [
    ("docci", _outside_docci), ("sharegpt4v", _outside_sharegpt4v),
    ("coco_karpathy", _outside_coco), ("dci", _outside_dci)])
def test_paths_leaving_the_manual_dir_are_bad_records(tmp_path, format_name, mutate):
  root = tmp_path / "raw"
  entries = photos.write_raw_layout(format_name, root, short_side=64)
  (tmp_path / "outside.jpg").write_bytes(b"must never be read")
  (tmp_path / "outside.json").write_text("{}")
  split, record_id, origin = mutate(root)
  got = list(READERS[FORMAT_TO_DATASET[format_name]].read(root, split))
  bad = [x for x in got if isinstance(x, records.BadRecord)]
  assert len(bad) == 1 and got[1] is bad[0]
  assert bad[0].reason == records.PATH_OUTSIDE_DATASET and bad[0].id == record_id
  assert bad[0].origin.endswith(origin) and "leaves the dataset folder" in bad[0].detail
  expected = [e.id for e in entries if split in e.splits]
  assert [x.id for x in got] == expected[:1] + [record_id] + expected[2:]
  assert all(pathlib.Path(x.image).is_relative_to(root) for x in got[:1] + got[2:])


def test_inside_refuses_absolute_and_parent_paths(tmp_path):
  assert common.inside(tmp_path, "a/b.jpg", "image") == tmp_path / "a" / "b.jpg"
  assert common.inside(tmp_path, "./b.jpg", "image") == tmp_path / "b.jpg"
  for recorded in ("/etc/passwd", "../b.jpg", "a/../../b.jpg", "..\\b.jpg", "C:\\b.jpg", "C:b.jpg",
                   "\\\\host\\share\\b.jpg"):
    with pytest.raises(common.FieldError) as info:
      common.inside(tmp_path, recorded, "image", "r1")
    assert info.value.reason == records.PATH_OUTSIDE_DATASET and info.value.record_id == "r1"
  with pytest.raises(common.FieldError) as info:
    common.inside(tmp_path, "", "image")
  assert info.value.reason == records.WRONG_FIELD_TYPE


def test_remap_path_never_leaves_root(tmp_path):
  root = tmp_path / "root"
  (root / "photos").mkdir(parents=True)
  (tmp_path / "secret.jpg").write_bytes(b"x")  # exists right above root
  assert common.remap_path("../secret.jpg", root) == root / "secret.jpg"
  assert common.remap_path(str(tmp_path / "secret.jpg"), root) == root / "secret.jpg"
