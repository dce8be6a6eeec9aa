"""The demo's shared cache: a second demo started while a first makes the data or the
pretrained start waits for it, instead of stopping at the first's lock."""

import pytest

from goal_jax import demo
from goal_jax import files
from goal_jax.data import builder
from goal_jax.data import prepare


def test_it_waits_while_another_run_holds_the_lock_then_reads_what_it_made(monkeypatch, capsys):
  monkeypatch.setattr(demo, "WAIT_POLL_S", 0.0)
  made = []

  def make():
    made.append(1)
    if len(made) < 4:  # the other run still holds the folder
      raise files.FolderBusyError("dataset folder /c/synthetic is in use by another run")
    return "/c/pretrained/model"

  assert demo.waiting_for_other_runs(make, "the pretrained start") == "/c/pretrained/model"
  assert len(made) == 4
  # One line, however long the wait.
  assert capsys.readouterr().out.splitlines() == [
      f"[demo] another run is making the pretrained start in the cache ({demo.cache_dir()}); "
      "waiting for it"]


def test_it_gives_up_after_the_longest_wait(monkeypatch):
  monkeypatch.setattr(demo, "WAIT_POLL_S", 0.0)
  monkeypatch.setattr(demo, "WAIT_MAX_S", 0.05)

  def make():
    raise files.FolderBusyError("workdir /c/pretrained/abc.tmp is in use by another run")

  with pytest.raises(files.FolderBusyError, match="is in use by another run"):
    demo.waiting_for_other_runs(make, "the pretrained start")


def test_a_preparation_that_meets_a_live_lock_waits_for_its_release(tmp_path, monkeypatch):
  """The real lock `prepare` takes (held by this process: alive): the first call meets it, the
  holder lets go while the demo waits, and the next call prepares."""
  lock = builder.DatasetLock("synthetic", str(tmp_path))
  lock.acquire()
  monkeypatch.setattr(demo.time, "sleep", lambda seconds: lock.release())  # the holder ends
  calls = []

  def prepare_small():
    calls.append(1)
    return prepare.prepare("synthetic", str(tmp_path), splits=["test"], seed=0, version=3,
                           verbose=False)

  demo.waiting_for_other_runs(prepare_small, "the embedded dataset")
  assert len(calls) == 2
  assert len(builder.load_source("synthetic", "test", str(tmp_path))) == 300


def test_the_pretrained_start_is_keyed_on_what_defines_it(tmp_path, monkeypatch):
  """Fields a resumed run may change (logging, input threads, where images are normalised) leave
  the cache key alone, so a release adding such a field does not pretrain again; a field that
  changes the model, or the number of steps, changes it."""
  monkeypatch.setenv("GOAL_JAX_CACHE", str(tmp_path / "cache"))
  data_dir = tmp_path / "data"
  (data_dir / "synthetic" / "3.0.0").mkdir(parents=True)
  (data_dir / "synthetic" / "3.0.0" / "dataset_info.json").write_text("{}")
  folders = []

  def pretrained_folder(config):  # where ensure_pretrained looks, without training
    monkeypatch.setattr(demo, "pretrain_config", lambda *a, **k: config)
    monkeypatch.setattr(demo.loop, "run", lambda c, workdir: folders.append(workdir) or
                        {"preempted": True})
    assert demo.ensure_pretrained(str(data_dir)) is None
    return folders[-1]

  base = pretrained_folder(demo.pretrain_config(str(data_dir)))
  same = demo.pretrain_config(str(data_dir))
  same.input.normalize_on, same.log_every, same.input.read_threads = "host", 7, 1
  assert pretrained_folder(same) == base
  for change in ("lr", "steps"):
    other = demo.pretrain_config(str(data_dir))
    if change == "lr":
      other.optim.lr *= 2
    else:
      other.total_steps += 1
    assert pretrained_folder(other) != base, change
