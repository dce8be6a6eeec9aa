"""Scale-out at the trainer level: the GOAL trainer gives the same losses on 2 processes x 2 devices
as on 1 process x 4, its checkpoint resumes on the other process count at the same data position,
and FSDP trains exactly like replication while really sharding the params.

The references are independent runs of the plain 1-process trainer. Why equality holds: every
process takes interleaved positions of one globally shuffled stream (`data.pipeline`), so global
batch k holds the same records for any process count, only in another row order. The towers treat
rows independently and every GOAL term is invariant to a row permutation (InfoNCE permutes its
logits' rows and columns together; the local and TSL terms are means over valid rows), so row
order changes nothing but the float summation order.
"""
import os
import shutil
import sys

from absl import flags
import grain
import jax
from ml_collections import config_flags
import numpy as np
import pytest

from goal_jax.configs import goal
from goal_jax.data import pipeline
from goal_jax.models import checkpoint as model_checkpoint
from goal_jax.training import checkpointing
from goal_jax.training import loop
import _multiprocess as multiprocess  # tests/ is on sys.path under pytest.
from test_train import BATCH, losses_of, prepare_synthetic, tiny_config

# Odd on purpose: 21 records split unevenly over 2 processes, and 8-record batches cross epoch
# boundaries mid-batch, where a per-epoch split would give the processes other records.
NUM_RECORDS = 21
RTOL = 1e-5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return prepare_synthetic(str(tmp_path_factory.mktemp("tfds")), NUM_RECORDS)


def config_arg(data_dir, steps):
  return (f"variant=tiny/8,batch={BATCH},dataset=synthetic,data_dir={data_dir},steps={steps},"
          "init=random")


def override_flags(config, base, prefix="--config."):
  """`--config.a.b=value` for every field where `config` differs from `base`."""
  overrides = []
  for name, value in config.items():
    if hasattr(value, "items"):
      overrides += override_flags(value, base[name], f"{prefix}{name}.")
    elif value != base[name]:
      overrides.append(f"{prefix}{name}={value}")
  return overrides


def train_command(data_dir, workdir, steps):
  """`python -m goal_jax.train` running exactly `tiny_config("goal", data_dir, steps)`."""
  arg = config_arg(data_dir, steps)
  overrides = override_flags(tiny_config("goal", data_dir, steps), goal.get_config(arg))
  return [sys.executable, "-m", "goal_jax.train", f"--config={REPO}/configs/goal.py:{arg}",
          f"--workdir={workdir}", *overrides]


def test_command_line_flags_rebuild_the_tiny_config(data_dir):
  """The subprocess trainer sees the same config as the in-process reference runs."""
  command = train_command(data_dir, "/unused", steps=3)
  argv = [command[0], *(a for a in command[3:] if not a.startswith("--workdir="))]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  assert flag_values.config.to_dict() == tiny_config("goal", data_dir, 3).to_dict()


def test_process_slices_interleave_into_the_one_process_batches(data_dir):
  """Global batch k = the union of the processes' batch k, for 1, 2 and 4 processes."""
  config = pipeline.default_config()
  config.update(dict(dataset="synthetic", batch_size=BATCH, image_size=32, patch_size=8,
                     text_context=32, fields="global"))
  steps = 6  # 48 draws from 21 records: three epoch boundaries

  def record_ids(process_count):
    iterators = [iter(pipeline.make_dataset(config, data_dir, process_index=p,
                                            process_count=process_count))
                 for p in range(process_count)]
    return [sorted(i for it in iterators for i in next(it)["record_index"].tolist())
            for _ in range(steps)]

  one = record_ids(1)
  assert record_ids(2) == one
  assert record_ids(4) == one


def _interleaved_batches():
  """A Grain iterator that cannot jump (like multiprocess prefetch): an interleave of two."""
  parts = [grain.MapDataset.range(start, 100, 2).to_iter_dataset() for start in (0, 1)]
  return iter(grain.experimental.InterleaveIterDataset(parts, cycle_length=2).batch(3))


@pytest.mark.parametrize("kind", ["pipeline", "interleave"])
def test_skip_batches_lands_where_drawing_does(kind, data_dir):
  """A resume on another process count moves the iterator `step` batches ahead."""
  if kind == "pipeline":  # jumps by index
    config = pipeline.default_config()
    config.update(dict(dataset="synthetic", batch_size=4, image_size=32, patch_size=8,
                       text_context=32, fields="global"))
    make = lambda: iter(pipeline.make_dataset(config, data_dir, process_index=0, process_count=1))
    key = "record_index"
  else:  # draws
    make, key = _interleaved_batches, None
    with pytest.raises(NotImplementedError):
      grain.experimental.set_next_index(make(), 1)
  drawn = make()
  expected = [next(drawn) for _ in range(8)][6:]
  skipped = make()
  checkpointing.skip_batches(skipped, 6)
  got = [next(skipped) for _ in range(2)]
  pick = (lambda b: b[key].tolist()) if key else (lambda b: b.tolist())
  assert [pick(b) for b in got] == [pick(b) for b in expected]


# ------------------------------------------------------------------------------------------------
# Real runs. The 2-process job runs `python -m goal_jax.train` in each process (a localhost
# coordinator, 2 fake CPU devices each); the references run `loop.run` here on 4 fake devices.


@pytest.fixture(scope="module")
def straight_run(data_dir, tmp_path_factory):
  """The reference: 6 steps, 1 process x 4 devices."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  loop.run(tiny_config("goal", data_dir, steps=6), workdir)
  return workdir


@pytest.fixture(scope="module")
def two_process_run(data_dir, tmp_path_factory):
  """3 steps on 2 processes x 2 devices; its last step is checkpointed (step 3 = total_steps).

  With a constant learning rate, 3 of 6 steps and all of a 3-step run are the same computation.
  """
  workdir = str(tmp_path_factory.mktemp("two_process"))
  multiprocess.run_processes(train_command(data_dir, workdir, steps=3), num_processes=2,
                             devices_per_process=2, timeout=500)
  return workdir


@pytest.mark.slow
def test_two_processes_match_one(straight_run, two_process_run):
  losses = losses_of(two_process_run)
  assert len(losses) == 3
  np.testing.assert_allclose(losses, losses_of(straight_run)[:3], rtol=RTOL)
  # Both processes took part in saving the final model (process 0 alone would hang in Orbax).
  params, model_config = model_checkpoint.load_model(os.path.join(two_process_run, "model"))
  assert model_config.context_length == 96
  assert np.all(np.isfinite(params["logit_scale"]))


@pytest.mark.slow
def test_two_process_checkpoint_resumes_on_one_process(data_dir, straight_run, two_process_run,
                                                       tmp_path):
  """Steps 4..6 continued on 1 process equal steps 4..6 of the straight 1-process run."""
  saved = os.path.join(two_process_run, "checkpoints", "3")
  grain_files = sorted(f for f in os.listdir(os.path.join(saved, "data_iter")) if ".json" in f)
  assert grain_files == ["process_0-of-2.json", "process_1-of-2.json"]  # none for 1 process
  shutil.copytree(os.path.join(two_process_run, "checkpoints"), tmp_path / "checkpoints")
  out = loop.run(tiny_config("goal", data_dir, steps=6), str(tmp_path))
  assert out["step"] == 6
  losses = losses_of(str(tmp_path))
  assert len(losses) == 3
  np.testing.assert_allclose(losses, losses_of(straight_run)[3:], rtol=RTOL)
  resumed, _ = model_checkpoint.load_model(str(tmp_path / "model"))
  reference, _ = model_checkpoint.load_model(os.path.join(straight_run, "model"))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(resumed), jax.tree.leaves(reference)):
    name = jax.tree_util.keystr(path)
    if "['key']['bias']" in name:
      # Softmax ignores a key bias (it adds q.b to every logit of a query): its gradient is
      # float noise, which Adam scales up to lr-sized steps. Any summation order gives others.
      continue
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)


def run_capturing_params(config, workdir, monkeypatch):
  """`loop.run`, keeping the final CLIP params as the loop held them (with their shardings)."""
  captured = {}
  original = loop.save_final_model

  def capture(workdir, state, model_config, total_steps, **kwargs):
    captured.update(state["params"]["clip"])
    original(workdir, state, model_config, total_steps, **kwargs)

  with monkeypatch.context() as patch:
    patch.setattr(loop, "save_final_model", capture)
    loop.run(config, workdir)
  return losses_of(workdir), captured


def test_fsdp_trains_like_replication(data_dir, tmp_path, monkeypatch):
  replicated = tiny_config("goal", data_dir, steps=3)
  fsdp = tiny_config("goal", data_dir, steps=3)
  fsdp.sharding = [(".*", 'fsdp(axis="data", min_size_mb=0)')]
  losses_r, params_r = run_capturing_params(replicated, str(tmp_path / "r"), monkeypatch)
  losses_f, params_f = run_capturing_params(fsdp, str(tmp_path / "f"), monkeypatch)
  np.testing.assert_allclose(losses_f, losses_r, rtol=RTOL)

  table_r = params_r["text"]["token_embedding"]["embedding"]  # [vocab 49408, width]
  table_f = params_f["text"]["token_embedding"]["embedding"]
  assert table_r.sharding.spec == jax.sharding.PartitionSpec()
  assert table_f.sharding.spec == jax.sharding.PartitionSpec("data", None)
  assert {s.data.shape for s in table_f.addressable_shards} == {
      (table_f.shape[0] // 4, table_f.shape[1])}
  np.testing.assert_allclose(np.asarray(table_f), np.asarray(table_r), rtol=1e-4, atol=1e-6)
