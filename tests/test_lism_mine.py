"""The LISM job on prepared `synthetic` shards: ground-truth recovery, resume, output, CLI.

The scorer is a colour model built to prefer the right region, independent of the module: a crop
embeds to its histogram over the 7 shape colours (each pixel goes to the nearest of the colours,
their texture shades and the backgrounds; backgrounds count nothing), a sentence to the counts of
the colour words it names. A shape sentence ("A small red striped circle ...") thus scores highest
on the crop of its shape, and the summary (no colour word) scores 0 everywhere, a tie that goes
to the full image. With the `oracle` segmenter (the records' own boxes) the mined pair of each
shape sentence must be its ground-truth box whenever the scene's colours are distinct.
"""
import dataclasses
import json
import math
import os
import re
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goal_jax.data import builder, pipeline, prepare
from goal_jax.data import images as images_lib
from goal_jax.data import synthetic_v1 as synthetic  # its 96 px scenes, prepared by --version=1
from goal_jax.lism import mine, scoring, selection
from goal_jax.text import tokenizer as text_tokenizer

NUM_IMAGES = 16
STORED_SIDE = 48  # synthetic originals are 96 px: boxes must map back through a factor 2
SCORER_SIZE = 16


def _colour_scorer() -> scoring.Scorer:
  names = list(synthetic.COLOURS)
  prototypes = ([synthetic.COLOURS[c] for c in names] + [synthetic.shade(synthetic.COLOURS[c])
                                                         for c in names]
                + list(synthetic.BACKGROUNDS.values()))
  prototypes = jnp.asarray(prototypes, jnp.float32)  # [17, 3]
  to_colour = np.zeros((len(prototypes), len(names)), np.float32)
  to_colour[np.arange(2 * len(names)), np.tile(np.arange(len(names)), 2)] = 1.0
  tok = text_tokenizer.get_tokenizer()
  colour_ids = jnp.asarray([tok.encode(c)[0] for c in names], jnp.int32)
  assert all(len(tok.encode(c)) == 1 for c in names)

  def normalise(x):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-12))

  def encode_images(params, images):
    del params
    rgb = (images * jnp.asarray(images_lib.STD_RGB) + jnp.asarray(images_lib.MEAN_RGB)) * 255.0
    nearest = jnp.argmin(jnp.sum((rgb[..., None, :] - prototypes) ** 2, -1), -1)
    counts = jax.nn.one_hot(nearest, len(prototypes)).sum(axis=(1, 2))
    return normalise(counts @ to_colour)

  def encode_texts(params, ids):
    del params
    return normalise((ids[:, :, None] == colour_ids).sum(axis=1).astype(jnp.float32))

  return scoring.Scorer({"logit_scale": jnp.asarray(math.log(100.0))}, SCORER_SIZE, 77,
                        encode_images, encode_texts, lambda p: p["logit_scale"])


OPTIONS = mine.MineOptions(segmenter="oracle", chunk_images=5, crop_batch=32, text_batch=32,
                           crop_geometry="squash", num_workers=2,
                           candidates=selection.CandidateOptions(min_area=0.0, max_area=0.8,
                                                                 max_candidates=12))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A `synthetic` train split of NUM_IMAGES records, stored at 48 px (originals 96 px)."""
  data_dir = str(tmp_path_factory.mktemp("shards"))
  sizes = dict(synthetic.SPLIT_SIZES)
  synthetic.SPLIT_SIZES.update(train=NUM_IMAGES, test=4)
  try:
    prepare.prepare("synthetic", data_dir, splits=("train", "test"),
                    image_short_side=STORED_SIDE, splitter="goal", version=1, verbose=False)
  finally:
    synthetic.SPLIT_SIZES.update(sizes)
  return data_dir


@pytest.fixture(scope="module")
def scorer():
  return _colour_scorer()


def _copy_source(prepared, tmp_path):
  """A private copy of the prepared shards (each test writes its own output dataset)."""
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(os.path.join(prepared, "synthetic"), tmp_path / "synthetic")
  return str(tmp_path)


def _records(name, split, data_dir):
  source = builder.load_source(name, split, data_dir)
  return [builder.decode_record(source[i]) for i in range(len(source))]


def test_mined_pairs_recover_the_ground_truth(prepared, scorer, tmp_path):
  data_dir = _copy_source(prepared, tmp_path)
  rule = selection.SelectionOptions("all", keep_full_image=True)
  result = mine.run(data_dir, "synthetic", "train", scorer, "colour", OPTIONS, rule,
                    verbose=False)
  assert result["out"] == "synthetic_lism" and result["mined"].complete
  mined = _records("synthetic_lism", "train", data_dir)
  source = _records("synthetic", "train", data_dir)
  assert len(mined) == NUM_IMAGES
  exact = 0
  for index, (record, original) in enumerate(zip(mined, source)):
    # Everything but the pairs is the source record, byte for byte.
    for key in ("id", "image", "caption", "sentence_starts", "sentence_ends", "original_size"):
      np.testing.assert_array_equal(record[key], original[key])
    scene = synthetic.scene("train", index)
    _, gt_boxes = synthetic.render(scene)  # independent ground truth, original pixels
    pairs = {int(s): (tuple(b), f) for s, b, f in zip(
        record["pair_sentence"], record["pair_box"].tolist(), record["pair_is_full_image"])}
    assert set(pairs) == set(range(len(record["sentence_starts"])))  # every sentence, kept
    assert pairs[0] == ((0.0, 0.0, 96.0, 96.0), True)  # the summary names no colour
    distinct = len({o.colour for o in scene.objects}) == len(scene.objects)
    for k, obj in enumerate(scene.objects):
      box, full = pairs[1 + k]  # sentence 1 + k describes object k
      if distinct:
        assert box == tuple(map(float, gt_boxes[k])) and not full, (index, k, box)
      else:  # a box of that colour, or the full image when it is all that colour too
        same_colour = [tuple(map(float, gt_boxes[j])) for j, o in enumerate(scene.objects)
                       if o.colour == obj.colour]
        assert box in same_colour or full, (index, k, box, same_colour)
    exact += distinct
  assert exact >= 4  # scenes 2, 4, 9, 13, 15 have distinct colours
  summary = result["summaries"]["train"]
  assert summary["images"] == NUM_IMAGES and summary["pairs_full_image"] >= NUM_IMAGES
  assert summary["pairs_full_image"] == sum(r["pair_is_full_image"].sum() for r in mined)
  assert summary["truncated_sentences"] == 0


def test_max_selection_keeps_the_best_non_full_match_of_each_image(prepared, scorer, tmp_path):
  data_dir = _copy_source(prepared, tmp_path)
  mine.run(data_dir, "synthetic", "train", scorer, "colour", OPTIONS,
           selection.SelectionOptions("all"), verbose=False)
  every = _pairs("synthetic_lism", "train", data_dir)
  mine.run(data_dir, "synthetic", "train", scorer, "colour", OPTIONS, verbose=False)  # max
  for index, (best, pairs) in enumerate(zip(_pairs("synthetic_lism", "train", data_dir), every)):
    assert len(best["pair_sentence"]) == 1 and not best["pair_is_full_image"][0]
    top = int(np.argmax(pairs["pair_score"]))  # `all` lists matches best first
    assert top == 0 and best["pair_sentence"][0] == pairs["pair_sentence"][top]
    np.testing.assert_array_equal(best["pair_box"][0], pairs["pair_box"][top])
    assert best["pair_score"][0] == pairs["pair_score"].max() > 50.0
  # The trainer's pipeline reads the output as any prepared dataset.
  config = pipeline.default_config()
  config.update(dataset="synthetic_lism", batch_size=4, image_size=16, patch_size=8,
                fields="global,local")
  batch = next(iter(pipeline.make_dataset(config, data_dir, train=False, process_index=0,
                                          process_count=1)))
  assert batch["local_valid"].all() and batch["local_patch_mask"].any(axis=1).all()


def _pairs(name, split, data_dir):
  return [{k: r[k] for k in ("pair_sentence", "pair_box", "pair_score", "pair_is_full_image")}
          for r in _records(name, split, data_dir)]


def test_killed_job_resumes_to_the_one_shot_output(prepared, scorer, tmp_path, monkeypatch):
  one_shot = _copy_source(prepared, tmp_path / "one")
  mine.run(one_shot, "synthetic", "train", scorer, "colour", OPTIONS, verbose=False)
  resumed = _copy_source(prepared, tmp_path / "two")
  write_chunk, calls = mine._write_chunk, []  # pylint: disable=protected-access

  def crash_on_second_chunk(folder, chunk, matches):
    calls.append(chunk)
    if len(calls) == 2:
      (folder / f"chunk_{chunk:06d}.npz.tmp-1").write_bytes(b"half a file")
      raise KeyboardInterrupt("killed")
    write_chunk(folder, chunk, matches)

  monkeypatch.setattr(mine, "_write_chunk", crash_on_second_chunk)
  with pytest.raises(KeyboardInterrupt):
    mine.run(resumed, "synthetic", "train", scorer, "colour", OPTIONS, verbose=False)
  monkeypatch.setattr(mine, "_write_chunk", write_chunk)
  folder = mine.work_root(resumed, "synthetic_lism") / "train"
  assert sorted(p.name for p in folder.glob("chunk_*.npz")) == ["chunk_000000.npz"]
  assert not os.path.exists(os.path.join(resumed, "synthetic_lism", "1.0.0"))
  # A time-boxed slice, then the rest.
  result = mine.run(resumed, "synthetic", "train", scorer, "colour", OPTIONS, max_chunks=1,
                    verbose=False)["mined"]
  assert (result.chunks_before, result.chunks_mined, result.complete) == (1, 1, False)
  result = mine.run(resumed, "synthetic", "train", scorer, "colour", OPTIONS,
                    verbose=False)["mined"]
  assert (result.chunks_before, result.chunks_mined, result.num_chunks) == (2, 2, 4)
  assert not list(folder.glob("*.tmp-*"))
  for a, b in zip(_pairs("synthetic_lism", "train", one_shot),
                  _pairs("synthetic_lism", "train", resumed)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_a_moved_data_dir_resumes_without_mining_again(prepared, scorer, tmp_path):
  """The work folder records its source relative to data_dir: a data folder moved (or mounted
  elsewhere) part way resumes where it stopped, to the uninterrupted run's output. So does a
  work folder that recorded an absolute path (written by earlier versions)."""
  one_shot = _copy_source(prepared, tmp_path / "one")
  mine.run(one_shot, "synthetic", "train", scorer, "colour", OPTIONS, verbose=False)
  before = _copy_source(prepared, tmp_path / "before")
  first = mine.run(before, "synthetic", "train", scorer, "colour", OPTIONS, max_chunks=2,
                   verbose=False)["mined"]
  assert (first.chunks_mined, first.images_mined, first.complete) == (2, 10, False)
  config_path = mine.work_root(before, "synthetic_lism") / "train" / mine.CONFIG_FILE
  config = json.loads(config_path.read_text())
  assert config["source_dir"] == "synthetic/1.0.0"
  config["source_dir"] = os.path.join(before, "synthetic", "1.0.0")  # as earlier versions did
  config_path.write_text(json.dumps(config))
  moved = tmp_path / "moved" / "elsewhere"
  moved.parent.mkdir()
  os.rename(before, moved)
  result = mine.run(str(moved), "synthetic", "train", scorer, "colour", OPTIONS,
                    verbose=False)["mined"]
  assert (result.chunks_before, result.chunks_mined, result.images_mined) == (
      2, 2, NUM_IMAGES - 10)  # no image scored twice
  for a, b in zip(_pairs("synthetic_lism", "train", one_shot),
                  _pairs("synthetic_lism", "train", str(moved))):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_a_failed_output_write_keeps_the_earlier_output(prepared, scorer, tmp_path, monkeypatch):
  """TFDS deletes a dataset before regenerating it; the output is staged, so a write that fails
  (here: the third record) leaves the earlier `synthetic_lism` readable and unchanged."""
  data_dir = _copy_source(prepared, tmp_path)
  mine.run(data_dir, "synthetic", "train", scorer, "colour", OPTIONS, verbose=False)
  before = _pairs("synthetic_lism", "train", data_dir)
  original = mine._MinedRecords._generate_examples

  def fails_midway(self, split):
    for i, item in enumerate(original(self, split)):
      if i == 2:
        raise OSError("disk full")
      yield item

  monkeypatch.setattr(mine._MinedRecords, "_generate_examples", fails_midway)
  with pytest.raises(OSError, match="disk full"):
    mine.write_output(data_dir, "synthetic_lism")
  after = _pairs("synthetic_lism", "train", data_dir)
  assert len(after) == len(before) > 2
  for a, b in zip(after, before):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not [p for p in os.listdir(os.path.join(data_dir, "synthetic_lism"))
              if p.startswith(".preparing")]


def test_other_settings_are_refused_and_selection_changes_re_mine_nothing(prepared, scorer,
                                                                          tmp_path):
  data_dir = _copy_source(prepared, tmp_path)
  mine.run(data_dir, "synthetic", "train", scorer, "colour", OPTIONS, verbose=False)
  folder = mine.work_root(data_dir, "synthetic_lism") / "train"
  stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("chunk_*.npz")}
  other = dataclasses.replace(OPTIONS, crop_geometry="center_crop")
  with pytest.raises(ValueError, match="crop_geometry"):
    mine.run(data_dir, "synthetic", "train", scorer, "colour", other, verbose=False)
  with pytest.raises(ValueError, match="must differ from the source"):
    mine.run(data_dir, "synthetic", "train", scorer, "colour", OPTIONS, out="synthetic",
             verbose=False)
  result = mine.run(data_dir, "synthetic", "train", scorer, "colour", OPTIONS,
                    selection.SelectionOptions("topk", top_k=2), verbose=False)
  assert result["mined"].chunks_mined == 0
  assert {p.name: p.stat().st_mtime_ns for p in folder.glob("chunk_*.npz")} == stamps
  pairs = _pairs("synthetic_lism", "train", data_dir)
  assert all(len(p["pair_sentence"]) == 2 for p in pairs)
  assert all(p["pair_score"][0] >= p["pair_score"][1] for p in pairs)
  # The test split joins as a second split with its own selection (the joint test set's 1:1).
  mine.run(data_dir, "synthetic", "test", scorer, "colour", OPTIONS,
           selection.SelectionOptions("max", keep_full_image=True), verbose=False)
  assert all(len(p["pair_sentence"]) == 2 for p in _pairs("synthetic_lism", "train", data_dir))
  assert all(len(p["pair_sentence"]) == 1 for p in _pairs("synthetic_lism", "test", data_dir))
  metadata = builder.prepared_metadata("synthetic_lism", data_dir)
  assert metadata["lism"]["test"]["selection"]["keep_full_image"] is True
  assert metadata["lism"]["train"]["matching"]["segmenter"] == "oracle"
  assert metadata["options"]["image_short_side"] == STORED_SIDE  # the source's, carried over


def test_long_sentences_are_truncated_counted_and_kept(prepared, scorer, tmp_path):
  """At an 8-token context most synthetic sentences overflow; none is dropped."""
  data_dir = _copy_source(prepared, tmp_path)
  short = dataclasses.replace(OPTIONS, text_context=8)
  rule = selection.SelectionOptions("all", keep_full_image=True)
  summary = mine.run(data_dir, "synthetic", "train", scorer, "colour", short, rule,
                     verbose=False)["summaries"]["train"]
  tok = text_tokenizer.get_tokenizer()
  expected, sentences = 0, 0
  for record in _records("synthetic", "train", data_dir):
    for s, e in zip(record["sentence_starts"], record["sentence_ends"]):
      expected += len(tok.encode(record["caption"][s:e], normalize=False)) + 2 > 8
      sentences += 1
  assert 0 < summary["truncated_sentences"] == expected
  assert summary["sentences"] == sentences == summary["pairs"]
  assert summary["images_with_pairs"] == NUM_IMAGES


@pytest.mark.parametrize("detail_options, seen_side", [
    ({}, 96),  # the detail copy: the original pixels
    ({"detail_short_side": 64}, 64),  # a smaller detail copy: boxes scale by 1.5
    ({"detail": False}, STORED_SIDE),  # no detail copy (as older shards): the 48 px copy, x2
])
def test_segmenter_boxes_map_back_to_original_pixels(prepared, scorer, tmp_path, detail_options,
                                                     seen_side):
  """A segmenter sees the detail copy (else the stored one); its boxes reach the shards in
  original pixels."""
  from goal_jax.lism import segmenters  # pylint: disable=g-import-not-at-top
  if detail_options:
    data_dir = str(tmp_path)
    prepare.prepare("synthetic", data_dir, splits=("test",), image_short_side=STORED_SIDE,
                    splitter="goal", version=1, verbose=False, **detail_options)
  else:
    data_dir = _copy_source(prepared, tmp_path)

  def fixed():
    def segment(image, record):
      del record
      assert image.shape == (seen_side, seen_side, 3)
      at_48 = np.array([(6, 12, 30, 36), (0, 0, 47, 47)], np.float32)  # drawn at 48 px
      return segmenters.Segmentation(at_48 * seen_side / STORED_SIDE)
    return segment

  segmenters.register_segmenter("test_fixed", fixed)
  try:
    mine.run(data_dir, "synthetic", "test", scorer, "colour",
             dataclasses.replace(OPTIONS, segmenter="test_fixed"),
             selection.SelectionOptions("all", keep_full_image=True), verbose=False)
  finally:
    segmenters._REGISTRY.pop("test_fixed")  # pylint: disable=protected-access
  boxes = set()
  for record in _records("synthetic_lism", "test", data_dir):
    boxes |= {tuple(b) for b in record["pair_box"].tolist()}
  # (0, 0, 47, 47) covers 96 % of the image: filtered out; the full image is (0, 0, 96, 96).
  assert boxes <= {(12.0, 24.0, 60.0, 72.0), (0.0, 0.0, 96.0, 96.0)}
  assert (12.0, 24.0, 60.0, 72.0) in boxes


def test_candidate_crops_come_from_the_detail_copy_of_a_2000px_photo():
  """What the scorer sees: the crop of a 64-px box with 2-px stripes keeps them when cut from the
  detail copy (the original pixels), and is flat grey when cut from the 256 px copy."""
  from goal_jax.data import records  # pylint: disable=g-import-not-at-top
  from goal_jax.lism import segmenters  # pylint: disable=g-import-not-at-top
  pixels = np.full((2000, 1600, 3), 128, np.uint8)
  pixels[1000:1064, 1000:1064] = np.where((np.arange(1000, 1064) // 2) % 2 == 0, 255,
                                          0)[None, :, None]
  example = records.RawExample(id="striped", image=pixels, caption="Grey. A striped patch.")
  seen = []

  def spy():
    def segment(image, record):
      del record
      seen.append(image.shape[:2])
      s = image.shape[0] / 2000  # the box in the pixels of the image seen
      return segmenters.Segmentation(np.array([[1000, 1000, 1064, 1064]], np.float32) * s)
    return segment

  options = dataclasses.replace(
      OPTIONS, segmenter="test_spy", num_workers=1,
      candidates=selection.CandidateOptions(min_area=0.0, max_area=0.8, max_candidates=4))
  segmenters.register_segmenter("test_spy", spy)
  try:
    works = {}
    for name, detail in (("detail", True), ("small", False)):
      record, _ = records.make_record(example, dataset="test", detail=detail)
      works[name] = next(mine.prepare_works([record], [0], options, 64))
  finally:
    segmenters._REGISTRY.pop("test_spy")  # pylint: disable=protected-access
  assert seen == [(2000, 1600), (320, 256)]
  for work in works.values():  # the same box, in original pixels, after the full image
    np.testing.assert_allclose(work.payload.boxes[1], [1000, 1000, 1064, 1064], atol=1e-3)
  stripes = np.where((np.arange(64) // 2) % 2 == 0, 255.0, 0.0)  # by hand, 1:1 at 64 px
  sharp = works["detail"].crops[1].astype(float).mean(axis=(0, 2))
  np.testing.assert_allclose(sharp, stripes, atol=10)
  flat = works["small"].crops[1].astype(float).mean(axis=(0, 2))
  assert np.abs(flat[:-2] - flat[2:]).mean() < 10 and np.abs(flat - stripes).mean() > 100


@pytest.mark.parametrize("flags, message", [
    (["--dataset=docci", "--checkpoint=/ckpt", "--num_workers=2"], "num_workers"),
    (["--dataset=docci", "--checkpoint=/ckpt", "--out=mined"], "out"),
    (["--checkpoint=/ckpt"], "--dataset is required"),
])
def test_command_line_mistake_is_one_error_line(flags, message):
  result = subprocess.run([sys.executable, "-m", "goal_jax.lism", *flags], capture_output=True,
                          text=True, cwd=pathlib.Path(__file__).parents[1], timeout=300)
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert result.stderr.startswith("error: ") and message in result.stderr


def _run_lism_command(argv):
  """The `lism` command's main in this process, with `argv`'s flags (reset afterwards)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from goal_jax.lism import __main__ as cli  # pylint: disable=g-import-not-at-top
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  try:
    cli.main(argv[:1])
  finally:
    flags.FLAGS.unparse_flags()


def test_command_line_with_a_tiny_clip_checkpoint(prepared, tmp_path):
  """`python -m goal_jax.lism` end to end: a random tiny/8 checkpoint, Felzenszwalb, topk."""
  from goal_jax.models import checkpoint, clip  # pylint: disable=g-import-not-at-top
  data_dir = _copy_source(prepared, tmp_path)
  config = clip.get_model_config("tiny/8")
  checkpoint.save_model(str(tmp_path / "ckpt"), clip.init_params(config, jax.random.key(0)),
                        config)
  summary_out = tmp_path / "summary.json"
  argv = ["lism", f"--data_dir={data_dir}", "--dataset=synthetic", "--split=test",
          f"--checkpoint={tmp_path / 'ckpt'}", "--selection=topk", "--top_k=2",
          "--segmenter_options=scale=200,levels=2,short_side=48", "--chunk_images=3",
          "--crop_batch=64",
          "--max_candidates=40",
          "--text_batch=16", f"--summary_out={summary_out}", "--out_dataset=mined"]
  _run_lism_command(argv)
  records = _records("mined", "test", data_dir)
  assert len(records) == 4
  for record in records:
    height, width = record["original_size"]
    assert 1 <= len(record["pair_sentence"]) <= 2 and not record["pair_is_full_image"].any()
    boxes = record["pair_box"]
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= width)
    assert np.all(boxes[:, 3] <= height)
    # Felzenszwalb on a 48 px copy of the 96 px detail copy, mapped back: even coordinates.
    np.testing.assert_array_equal(boxes % 2, 0)
  assert '"pairs"' in summary_out.read_text()


def test_a_moved_scorer_checkpoint_resumes_without_mining_again(prepared, tmp_path, capsys):
  """The command names its scorer by its weights, not its path: mining stopped after one chunk
  resumes from the same checkpoint moved elsewhere (no image scored twice). A work folder that
  named it by path (earlier versions) resumes too, and is rewritten in today's form."""
  from goal_jax.models import checkpoint, clip  # pylint: disable=g-import-not-at-top
  data_dir = _copy_source(prepared, tmp_path / "data")
  config = clip.get_model_config("tiny/8")
  params = clip.init_params(config, jax.random.key(0))
  checkpoint.save_model(str(tmp_path / "ckpt"), params, config)

  def lism(ckpt, *more):
    argv = ["lism", f"--data_dir={data_dir}", "--dataset=synthetic", "--split=test",
            f"--checkpoint={ckpt}", "--segmenter_options=scale=200,levels=2,short_side=48",
            "--chunk_images=2", "--max_candidates=10", "--out_dataset=mined", *more]
    _run_lism_command(argv)
    return capsys.readouterr().out

  assert "1 of 2 chunks mined" in lism(tmp_path / "ckpt", "--max_chunks=1")
  config_path = mine.work_root(data_dir, "mined") / "test" / mine.CONFIG_FILE
  want = scoring.scorer_id(params)
  assert json.loads(config_path.read_text())["scorer"] == want
  assert want == scoring.checkpoint_scorer_id(str(tmp_path / "ckpt"))
  assert want.startswith("weights ") and want.endswith(" dtype=checkpoint")
  os.rename(tmp_path / "ckpt", tmp_path / "moved")
  stored = json.loads(config_path.read_text())
  stored["scorer"] = f"{tmp_path / 'moved'} dtype=checkpoint"  # as earlier versions wrote it
  config_path.write_text(json.dumps(stored))
  out = lism(tmp_path / "moved")
  assert "mined 2 images (1 chunks)" in out  # the second chunk only
  assert json.loads(config_path.read_text())["scorer"] == want
  other = clip.init_params(config, jax.random.key(1))
  assert scoring.scorer_id(other) != want and scoring.scorer_id(params, "float32") != want


def test_the_progress_bar_starts_after_the_first_image_which_compiles(prepared, scorer, tmp_path,
                                                                      capsys):
  """The first image also compiles the scorer (20 s at B/16): it is reported on its own line, and
  the bar, whose ETA extrapolates its rate, starts counting at the second."""
  data_dir = _copy_source(prepared, tmp_path / "data")
  mine.run(data_dir, "synthetic", "train", scorer, "colour", OPTIONS, verbose=True)
  captured = capsys.readouterr()
  lines = [line for line in captured.out.splitlines() if line.startswith("LISM synthetic/train")]
  assert len(lines) == 1 and re.fullmatch(
      r"LISM synthetic/train: first image matched in \d+\.\d s \(it compiles the scorer\)",
      lines[0])
  bar_starts = re.findall(r"LISM synthetic/train:\s+\d+%\|[^|]*\|\s+(\d+)/(\d+)", captured.err)
  assert bar_starts and bar_starts[0][0] == "1"  # the bar's first frame: image 1 already done
