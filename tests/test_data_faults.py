"""When the disk is against a command: one `error:` line with the fix, and no finished work lost.

Read-only folders (refused before any work), a shard whose bytes changed (named, with the command
that writes it again), two runs into one dataset (the second stops at once, naming the first), a
killed run's leftovers (cleared by the next), and images too small, too large or misnamed.

Tests run as root here, which may write into a `chmod 0o555` folder anyway: the read-only cases
take a real failure where root fails too (a "folder" whose parent is a regular file), and the
wording of the read-only case from `os.access` made to answer as it does for a user.
"""
import glob
import io
import json
import os
import pathlib
import pickle
import socket
import struct
import subprocess
import sys
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from _cli import run_command
from goal_jax import cli
from goal_jax import config_utils
from goal_jax import evaluate
from goal_jax import export_hf
from goal_jax import files
from goal_jax import prepare as prepare_command
from goal_jax import train
from goal_jax.data import builder, images, photos, pipeline, prepare, records
from goal_jax.lism import mine

REPO = pathlib.Path(__file__).resolve().parents[1]


def _command(module, *flags):
  """`python -m <module> flags...` as the shell runs it: (exit code, stderr lines)."""
  result = subprocess.run([sys.executable, "-m", module, *map(str, flags)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
  return result.returncode, result.stderr.strip().splitlines()


def _read_only(monkeypatch, folder):
  """`os.access` answers for `folder` as it does for a user after `chmod 0o555` (not root)."""
  folder, access = os.path.abspath(folder), os.access

  def fake(path, mode, *args, **kwargs):
    if os.path.abspath(path) == folder and mode & os.W_OK:
      return False
    return access(path, mode, *args, **kwargs)

  monkeypatch.setattr(os, "access", fake)


def _last_error(capsys) -> list[str]:
  return [line for line in capsys.readouterr().err.strip().splitlines() if line]


# -- Read-only folders ----------------------------------------------------------------------------


def test_check_writable_names_the_folder_that_blocks_and_the_fix(tmp_path, monkeypatch):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(files.NotWritableError) as error:  # root fails here too
    files.check_writable(blocker / "shards", "--data_dir", "pass --data_dir=<elsewhere>")
  assert str(error.value) == (f"--data_dir {blocker / 'shards'} cannot be created: {blocker} is "
                              "a file, not a folder; pass --data_dir=<elsewhere>")
  with pytest.raises(files.NotWritableError, match="is a file, not a folder"):
    files.check_writable(blocker, "--workdir", "pass --workdir=<elsewhere>")
  files.check_writable(tmp_path / "new" / "deeper", "--out", "fix")  # creatable: no error
  files.check_writable("gs://bucket/tfds", "--data_dir", "fix")  # not checked
  _read_only(monkeypatch, tmp_path)
  with pytest.raises(files.NotWritableError) as error:
    files.check_writable(tmp_path / "new" / "deeper", "--out", "pass --out=<elsewhere>")
  assert str(error.value) == (
      f"--out {tmp_path / 'new' / 'deeper'} is not writable ({tmp_path}, where it would be "
      f"created): the folder is read-only for this user; pass --out=<elsewhere>, or make it "
      f"writable: chmod u+w {tmp_path}")


def test_check_writable_of_a_path_renamed_into_place_checks_its_folder(tmp_path, monkeypatch):
  """What `evaluate --out=results.json` (`write_atomic`) and `export_hf --out` (a folder built
  next to it) need: a folder that takes a new entry."""
  fix = "pass --out=<a file in a writable folder>"
  files.check_writable(tmp_path / "results.json", "--out", fix, renamed_in=True)
  _read_only(monkeypatch, tmp_path)
  with pytest.raises(files.NotWritableError) as error:
    files.check_writable(tmp_path / "results.json", "--out", fix, renamed_in=True)
  assert str(error.value) == (
      f"--out {tmp_path / 'results.json'} is not writable ({tmp_path}, where it would be "
      f"created): the folder is read-only for this user; {fix}, or make it writable: chmod u+w "
      f"{tmp_path}")
  (tmp_path / "results.json").write_text("{}")  # writable itself, but replaced by a rename
  with pytest.raises(files.NotWritableError, match=rf"is not writable \(its folder {tmp_path}\)"):
    files.check_writable(tmp_path / "results.json", "--out", fix, renamed_in=True)


def test_a_real_read_only_folder_is_refused(tmp_path):
  folder = tmp_path / "read_only"
  folder.mkdir()
  os.chmod(folder, 0o555)
  try:
    if os.access(folder, os.W_OK):
      pytest.skip("this user (root) may write into a read-only folder")
    with pytest.raises(files.NotWritableError, match=r"chmod u\+w"):
      files.check_writable(folder / "shards", "--data_dir", "fix")
  finally:
    os.chmod(folder, 0o755)


def test_prepare_into_a_read_only_data_dir_is_one_line_before_any_work(tmp_path, monkeypatch,
                                                                       capsys):
  _read_only(monkeypatch, tmp_path)
  data_dir = tmp_path / "shards"
  assert run_command(prepare_command, "--dataset=photos", f"--data_dir={data_dir}") == 1
  assert _last_error(capsys) == [
      f"error: the dataset folder {data_dir / 'photos'} is not writable ({tmp_path}, where it "
      "would be created): the folder is read-only for this user; pass --data_dir=<a writable "
      f"folder>, or make it writable: chmod u+w {tmp_path}"]
  assert not data_dir.exists()


def test_prepare_and_lism_under_a_file_are_one_line(tmp_path):
  """The real commands, where root fails too; `lism` refuses before loading its scorer (here
  the checkpoint does not even exist)."""
  (tmp_path / "a_file").write_text("")
  data_dir = tmp_path / "a_file" / "shards"
  code, lines = _command("goal_jax.prepare", "--dataset=photos", f"--data_dir={data_dir}")
  assert code == 1 and lines == [
      f"error: the dataset folder {data_dir / 'photos'} cannot be created: "
      f"{tmp_path / 'a_file'} is a file, not a folder; pass --data_dir=<a writable folder>"]
  code, lines = _command("goal_jax.lism", "--dataset=photos", f"--data_dir={data_dir}",
                         f"--checkpoint={tmp_path / 'absent'}")
  assert code == 1 and lines == [
      f"error: the dataset folder {data_dir / 'photos_lism'} cannot be created: "
      f"{tmp_path / 'a_file'} is a file, not a folder; pass --data_dir=<a writable folder>"]


def test_lism_into_a_read_only_data_dir_is_refused(tmp_path, monkeypatch):
  _read_only(monkeypatch, tmp_path)
  with pytest.raises(files.NotWritableError,
                     match=rf"dataset folder {tmp_path / 'docci_lism'} is not writable"):
    mine.check_output(str(tmp_path), "docci_lism")


@pytest.mark.parametrize("case", ["under_a_file", "read_only"])
def test_train_into_an_unwritable_workdir_is_one_line(tmp_path, monkeypatch, capsys, case):
  if case == "under_a_file":
    (tmp_path / "a_file").write_text("")
    workdir = tmp_path / "a_file" / "run"
    says = (f"error: --workdir {workdir} cannot be created: {tmp_path / 'a_file'} is a file, "
            "not a folder; pass --workdir=<a writable folder>")
  else:
    workdir = tmp_path / "run"
    workdir.mkdir()
    _read_only(monkeypatch, workdir)
    says = (f"error: --workdir {workdir} is not writable: the folder is read-only for this "
            f"user; pass --workdir=<a writable folder>, or make it writable: chmod u+w {workdir}")
  with pytest.raises(SystemExit) as exit_info:
    cli.run(train.main, expected=train.EXPECTED,
            argv=["goal_jax.train", f"--config={config_utils.recipe_path('global_ft.py')}",
                  f"--workdir={workdir}"])
  assert exit_info.value.code == 1
  assert _last_error(capsys) == [says]


def test_export_into_a_read_only_folder_is_one_line_before_reading_the_checkpoint(
    tmp_path, monkeypatch, capsys):
  _read_only(monkeypatch, tmp_path)
  code = run_command(export_hf, f"--checkpoint={tmp_path / 'absent'}",
                     f"--out={tmp_path / 'hf'}")
  assert code == 1 and _last_error(capsys) == [
      f"error: --out {tmp_path / 'hf'} is not writable ({tmp_path}, where it would be created): "
      f"the folder is read-only for this user; pass --out=<a path in a writable folder>, or "
      f"make it writable: chmod u+w {tmp_path}"]


def test_evaluate_out_under_a_file_is_one_line_before_anything_is_computed(tmp_path, capsys):
  """Before, the results were computed and then lost: the out check comes before the model."""
  (tmp_path / "a_file").write_text("")
  out = tmp_path / "a_file" / "results.json"
  code = run_command(evaluate, f"--checkpoint={tmp_path / 'absent'}", "--benchmarks=synthetic",
                     f"--out={out}")
  assert code == 1 and _last_error(capsys) == [
      f"error: --out {out} cannot be created: {tmp_path / 'a_file'} is a file, not a folder; "
      "pass --out=<a file in a writable folder>"]


# -- A corrupt shard ------------------------------------------------------------------------------


def _prepare_photos(data_dir):
  return prepare.prepare("photos", data_dir, image_short_side=64, detail=False, verbose=False)


def _flip_bytes(path, at, count=16):
  data = bytearray(path.read_bytes())
  data[at:at + count] = bytes(b ^ 0xFF for b in data[at:at + count])
  path.write_bytes(bytes(data))


def test_a_corrupt_shard_names_the_file_the_record_and_the_prepare_command(tmp_path):
  data_dir = tmp_path / "shards"
  _prepare_photos(data_dir)
  (shard,) = map(pathlib.Path, glob.glob(str(data_dir / "photos/*/photos-test.array_record*")))
  _flip_bytes(shard, shard.stat().st_size // 4)  # inside a chunk: "chunk data hash mismatch"
  source = builder.load_source("photos", "test", data_dir)
  errors = []
  for index in range(len(source)):
    try:
      source[index]
    except builder.CorruptShardError as e:
      errors.append((index, str(e)))
  assert errors and len(errors) < len(source)  # the other chunks still read
  index, message = errors[0]
  fix = (f"prepare the split test again (its other splits are kept): python -m goal_jax.prepare "
         f"--dataset=photos --data_dir={data_dir} --split=test --image_short_side=64 --nodetail")
  assert message == (f"shard {shard} is corrupt: record {index} of photos/test does not read "
                     f"(Corrupted Riegeli/records file: chunk data hash mismatch); {fix}")
  assert "\n" not in message
  # Grain's worker processes send it back pickled: the same class, the same message.
  again = pickle.loads(pickle.dumps(builder.CorruptShardError(message)))
  assert type(again) is builder.CorruptShardError and str(again) == message
  # Through the input pipeline (threads), as training and evaluation meet it.
  config = pipeline.default_config()
  config.update(dataset="photos", split="test", batch_size=2, num_workers=0)
  with pytest.raises(builder.CorruptShardError) as raised:
    for _ in pipeline.make_dataset(config, str(data_dir), train=False, process_index=0,
                                   process_count=1):
      pass
  assert str(raised.value).startswith(f"shard {shard} is corrupt: record ")
  assert str(raised.value).endswith(fix)
  # The fix works: prepared again with those options, every record reads.
  prepare.prepare("photos", data_dir, splits=["test"], image_short_side=64, detail=False,
                  verbose=False)
  source = builder.load_source("photos", "test", data_dir)
  assert all(source[i]["id"] for i in range(len(source)))


def test_the_rewrite_command_carries_the_manual_dir_and_options(tmp_path):
  photos.write_raw_layout("urban1k", tmp_path / "raw", short_side=64)
  prepare.prepare("urban1k", tmp_path / "out", tmp_path / "raw", image_short_side=48,
                  splitter="goal", min_image_side=8, verbose=False)
  assert builder.rewrite_advice("urban1k", tmp_path / "out", "test") == (
      "prepare the split test again (its other splits are kept): python -m goal_jax.prepare "
      f"--dataset=urban1k --manual_dir={tmp_path / 'raw'} --data_dir={tmp_path / 'out'} "
      "--split=test --splitter=goal --image_short_side=48 --min_image_side=8")


def test_a_split_over_tfds_memory_buffer_is_written_one_record_at_a_time(tmp_path, monkeypatch):
  """TFDS's writer holds records in memory up to 1 GB, then moves them to bucket files through
  TensorFlow (not installed: `prepare` of a larger split failed) and sorts them in memory; our
  ordered records are spooled to one file instead. Here TFDS's buffer is 1 kB."""
  from tensorflow_datasets.core import shuffle  # pylint: disable=g-import-not-at-top
  original = shuffle.Shuffler
  monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1000)
  summary = _prepare_photos(tmp_path)
  assert summary["splits"]["test"]["written"] == len(photos.PHOTOS)
  source = builder.load_source("photos", "test", tmp_path)
  ids = [builder.decode_record(source[i])["id"] for i in range(len(source))]
  assert ids == [f"photos/{photo.name}" for photo in photos.PHOTOS]  # the reader's order
  assert not list(tmp_path.rglob("*.spool")) and shuffle.Shuffler is original


# -- One run per dataset; a killed run's leftovers ------------------------------------------------


def test_a_second_prepare_stops_at_once_naming_the_first(tmp_path):
  data_dir = tmp_path / "shards"
  with builder.DatasetLock("photos", data_dir):  # a live run: this process
    holder = json.loads((data_dir / "photos" / files.LOCK_FILE).read_text())
    start = time.perf_counter()
    code, lines = _command("goal_jax.prepare", "--dataset=photos", f"--data_dir={data_dir}")
    assert code == 1 and time.perf_counter() - start < 120
    lock = data_dir / "photos" / files.LOCK_FILE
    assert lines == [
        f"error: dataset folder {data_dir / 'photos'} is in use by another run (pid "
        f"{os.getpid()} on {socket.gethostname()}, started {holder['started']}). Wait for it, "
        f"or, if that run is dead (another host cannot be checked from here), delete {lock}"]
    with pytest.raises(files.FolderBusyError, match=f"pid {os.getpid()}"):
      mine.check_output(str(data_dir), "photos")  # lism into the same dataset
  assert not (data_dir / "photos").exists()  # the lock was all it held


def test_a_killed_prepare_leaves_a_lock_and_staging_that_the_next_run_clears(tmp_path, caplog):
  data_dir = tmp_path / "shards"
  _prepare_photos(data_dir)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  folder = data_dir / "photos"
  (folder / files.LOCK_FILE).write_text(json.dumps(
      {"host": socket.gethostname(), "pid": dead.pid, "started": "x"}))
  staging = folder / f"{builder._STAGING_PREFIX}1.0.0-killed"  # pylint: disable=protected-access
  (staging / "photos" / "1.0.0").mkdir(parents=True)
  (staging / "photos" / "1.0.0" / "photos-test.array_record-00000-of-00001").write_bytes(b"half")
  with caplog.at_level("WARNING"):
    _prepare_photos(data_dir)
  assert sorted(p.name for p in folder.iterdir()) == ["1.0.0"]
  warned = [r.getMessage() for r in caplog.records]
  assert any(m.startswith(f"Removing a stale lock {folder / files.LOCK_FILE}") for m in warned)
  assert (f"Removed 1 staging folder(s) left in {folder} by a run that was killed: "
          f"{staging.name}") in warned


def test_an_unreadable_lock_is_busy_while_fresh_and_stale_once_old(tmp_path):
  """A lock file with no holder yet: a run taking it right now (refused), or one killed while
  taking it (taken over once it is old)."""
  lock = tmp_path / "photos" / files.LOCK_FILE
  lock.parent.mkdir()
  lock.write_text("")
  with pytest.raises(files.FolderBusyError, match=r"\(its lock file is being written\)"):
    builder.DatasetLock("photos", tmp_path).acquire()
  old = time.time() - 60
  os.utime(lock, (old, old))
  with builder.DatasetLock("photos", tmp_path):
    assert json.loads(lock.read_text())["pid"] == os.getpid()
  assert not lock.exists()


# -- Images: too small, too large, misnamed -------------------------------------------------------


def _urban1k(tmp_path):
  root = tmp_path / "raw"
  photos.write_raw_layout("urban1k", root, short_side=64)
  return root, root / "Urban1k" / "image"


def test_an_image_under_the_minimum_side_is_a_counted_bad_record(tmp_path):
  root, image_dir = _urban1k(tmp_path)
  Image.new("RGB", (300, 20), (10, 20, 30)).save(image_dir / "2.jpg")
  with pytest.raises(records.BadRecordError,
                     match=rf"urban1k: record '2' .*image_too_small: image {image_dir / '2.jpg'} "
                           r"is 300x20 pixels, a side under --min_image_side=32"):
    prepare.prepare("urban1k", tmp_path / "out", root, verbose=False)
  summary = prepare.prepare("urban1k", tmp_path / "out", root, skip_bad=True, verbose=False)
  assert summary["splits"]["test"]["skipped"] == {records.IMAGE_TOO_SMALL: 1}
  assert summary["splits"]["test"]["written"] == len(photos.PHOTOS) - 1
  assert "skipped 1 (image_too_small), e.g. 2 (" in prepare.format_summary(summary)
  assert prepare.prepare("urban1k", tmp_path / "all", root, min_image_side=0,
                         verbose=False)["splits"]["test"]["written"] == len(photos.PHOTOS)


def test_a_jpeg_over_the_pixel_limit_is_decoded_smaller_through_draft(tmp_path):
  path = tmp_path / "big.jpg"
  Image.new("RGB", (6000, 4000), (90, 120, 150)).save(path, quality=80)
  limit = 10_000_000  # 24 MP -> decoded at 1/2: 6 MP
  assert images.open_rgb(path, max_pixels=limit).size == (3000, 2000)
  assert images.open_rgb(path).size == (6000, 4000)  # under the default 100 MP
  example = records.RawExample(id="big", image=str(path), caption="A plain blue picture.")
  record, stats = records.make_record(example, dataset="test", max_image_pixels=limit)
  assert tuple(record["original_size"]) == (4000, 6000)  # boxes stay in original pixels
  assert tuple(record["detail_layout"]) == (2000, 3000, images.DETAIL_TILE)
  assert Image.open(io.BytesIO(record["image"])).size == (384, 256)
  assert stats.notes == ("JPEG over --max_image_pixels (decoded at 1/2 size or less)",)


def _png_claiming(path, width, height):
  """A valid 1x1 PNG whose header claims `width` x `height`: a decompression bomb's header."""
  Image.new("RGB", (1, 1)).save(path)
  data = bytearray(path.read_bytes())
  ihdr = 8 + 8  # signature, then length and type of IHDR
  data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
  data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
  path.write_bytes(bytes(data))


def test_a_png_over_the_limit_is_refused_from_its_header_without_pillows_warning(tmp_path):
  path = tmp_path / "bomb.png"
  _png_claiming(path, 20_000, 10_000)  # 200 MP: Pillow would warn at 89 MP and fail at 179 MP
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    with pytest.raises(images.ImageTooLargeError) as error:
      images.open_rgb(path)
    example = records.RawExample(id="bomb", image=str(path), caption="A huge picture.")
    with pytest.raises(records.BadRecordError,
                       match=f"image_too_large: image {path}: 20000x10000 pixels") as bad:
      records.make_record(example, dataset="test")
  assert str(error.value) == (
      f"image {path}: 20000x10000 pixels (200 MP) is over the 100 MP limit and a PNG image cannot "
      "be decoded at a reduced size (only JPEGs can): downscale it, or raise --max_image_pixels")
  assert bad.value.reason == records.IMAGE_TOO_LARGE


def test_a_png_named_jpg_is_read_and_noted_once_in_the_summary(tmp_path):
  root, image_dir = _urban1k(tmp_path)
  with Image.open(image_dir / "3.jpg") as jpeg:
    pixels = np.asarray(jpeg.convert("RGB"))
  Image.fromarray(pixels).save(image_dir / "3.jpg", format="PNG")
  summary = prepare.prepare("urban1k", tmp_path / "out", root, image_short_side=None,
                            verbose=False)
  note = "PNG content in a .jpg file (read as PNG)"
  assert summary["splits"]["test"]["notes"] == {note: 1}
  assert f"note: 1 record(s) written with {note}" in prepare.format_summary(summary)
  record = builder.decode_record(builder.load_source("urban1k", "test", tmp_path / "out")[2])
  assert record["id"] == "urban1k/3" and tuple(record["original_size"]) == pixels.shape[:2]
