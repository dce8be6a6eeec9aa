"""The trainer under faults: each test injects one (a bad state, an exception, a second run, a
changed config, a signal, ...) and checks that no finished work is lost and no wrong result is
kept silently."""
import dataclasses
import json
import os
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from goal_jax import cli
from goal_jax import config_utils
from goal_jax import sharding
from goal_jax import train
from goal_jax.data import builder as data_builder
from goal_jax.data import synthetic
from goal_jax.models import checkpoint as model_checkpoint
from goal_jax.training import loop
from goal_jax.training import finite
from goal_jax.training import metric_log
from goal_jax.training import resume
from goal_jax.training import workdir_lock
from test_train import REPO, losses_of, prepare_synthetic, tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return prepare_synthetic(str(tmp_path_factory.mktemp("tfds")), 8)


def checkpoint_steps(workdir):
  folder = os.path.join(workdir, "checkpoints")
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def model_params(workdir):
  params, _ = model_checkpoint.load_model(os.path.join(workdir, "model"))
  return jax.tree.leaves(params)


def assert_same_params(a, b):
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def fail_on_call(monkeypatch, module, name, call_number, error=RuntimeError("injected fault")):
  """Makes `module.name` raise `error` on its `call_number`-th call (1-based)."""
  original, calls = getattr(module, name), []

  def wrapper(*args, **kwargs):
    calls.append(1)
    if len(calls) == call_number:
      raise error
    return original(*args, **kwargs)

  monkeypatch.setattr(module, name, wrapper)


# -- Work lost ------------------------------------------------------------------------------------


def test_a_non_finite_updated_state_is_never_checkpointed(data_dir, tmp_path):
  """lr = 1e39 is inf in float32: step 1's loss (from the initial params) is finite, the params
  after its update are not. The save of step 1 must refuse instead of writing them."""
  config = tiny_config("global", data_dir, steps=3)
  config.optim.lr = 1e39
  config.checkpoint_every = 1
  with pytest.raises(finite.NonFiniteError,
                     match=r"step 1: the updated train state has non-finite values in \d+ of"):
    loop.run(config, str(tmp_path))
  assert checkpoint_steps(str(tmp_path)) == []
  assert not os.path.exists(tmp_path / "model")


def test_an_exception_in_the_loop_still_completes_the_save_in_flight(data_dir, tmp_path,
                                                                     monkeypatch):
  """Step 3's batch raises right after step 2's asynchronous save was started: that save
  completes (no Orbax temporary folder left) and a rerun resumes from it, bit-identical."""
  config = tiny_config("goal", data_dir, steps=4)
  config.checkpoint_every = 2
  loop.run(config, str(tmp_path / "straight"))
  fail_on_call(monkeypatch, sharding, "make_global_batch", 3)
  with pytest.raises(RuntimeError, match="injected fault"):
    loop.run(config, str(tmp_path / "crashed"))
  assert checkpoint_steps(str(tmp_path / "crashed")) == ["2"]
  monkeypatch.undo()
  assert loop.run(config, str(tmp_path / "crashed"))["step"] == 4
  assert losses_of(str(tmp_path / "crashed")) == losses_of(str(tmp_path / "straight"))
  assert_same_params(model_params(str(tmp_path / "crashed")),
                     model_params(str(tmp_path / "straight")))


def test_a_corrupt_shard_met_mid_run_saves_the_last_step_first(data_dir, tmp_path, monkeypatch):
  """Every read from the middle of the third batch on fails as a corrupt shard does: the run
  stops with the shard's one line, after saving step 2 at the data position after batch 2 (not
  after the half batch that read); once the data reads again the same command resumes from it
  and ends bit-identical to an uninterrupted run."""
  config = tiny_config("global", data_dir, steps=6)
  config.input.read_threads = 1  # reads in stream order: the failing one is fixed
  loop.run(config, str(tmp_path / "straight"))
  reads = []
  real_read = data_builder.ShardSource.__getitem__

  def read(source, index):
    reads.append(index)
    if len(reads) > 2 * config.input.batch_size + config.input.batch_size // 2:
      raise data_builder.CorruptShardError(f"shard X is corrupt: record {index} does not read")
    return real_read(source, index)

  monkeypatch.setattr(data_builder.ShardSource, "__getitem__", read)
  with pytest.raises(loop.SetupError) as raised:
    loop.run(config, str(tmp_path / "crashed"))
  message = str(raised.value)
  assert message.startswith("shard X is corrupt: record ") and "\n" not in message
  assert message.endswith("Training stopped after step 2; step 2 is saved: prepare the data "
                          "again, then rerun the same command to resume")
  assert checkpoint_steps(str(tmp_path / "crashed")) == ["2"]
  monkeypatch.undo()
  assert loop.run(config, str(tmp_path / "crashed"))["step"] == 6
  assert losses_of(str(tmp_path / "crashed")) == losses_of(str(tmp_path / "straight"))
  assert_same_params(model_params(str(tmp_path / "crashed")),
                     model_params(str(tmp_path / "straight")))


def test_a_failing_evaluation_never_costs_the_model(data_dir, tmp_path, monkeypatch):
  """The evaluation fails (its data goes missing mid-run): the one during training is logged
  and skipped, the one after training raises, and by then the model of the last step is saved.
  A rerun keeps it. (Data missing at start-up stops the run before it starts:
  tests/test_suggested_fixes.py.)"""
  def fail(*args, **kwargs):
    raise FileNotFoundError("dataset 'synthetic' split 'test' is not prepared")
  monkeypatch.setattr(loop.runner, "evaluate_benchmarks", fail)
  config = tiny_config("global", data_dir, steps=3)
  config.evals.benchmarks = "synthetic:test"
  config.eval_every = 2
  with pytest.raises(loop.EvaluationError, match=r"evaluation at step 3 failed"):
    loop.run(config, str(tmp_path))
  assert model_checkpoint.load_info(str(tmp_path / "model")) == {"step": 3}
  saved = model_params(str(tmp_path))
  with pytest.raises(loop.EvaluationError):
    loop.run(config, str(tmp_path))
  assert_same_params(model_params(str(tmp_path)), saved)


@pytest.mark.parametrize("error, says", [
    (loop.SetupError("no prepared dataset 'docci'"), "error: no prepared dataset 'docci'"),
    (loop.EvaluationError("evaluation at step 3 failed"),
     "error: evaluation at step 3 failed. The trained model is saved in {w}/model; evaluate it "
     "with: python -m goal_jax.evaluate --checkpoint={w}/model")])
def test_the_command_prints_one_error_line_and_how_to_evaluate_a_saved_model(
    tmp_path, monkeypatch, capsys, error, says):
  def fail(config, workdir):
    raise error
  monkeypatch.setattr(train, "_train", fail)
  workdir = tmp_path / "run"
  with pytest.raises(SystemExit) as exit_info:
    cli.run(train.main, expected=train.EXPECTED,
            argv=["goal_jax.train", f"--config={config_utils.recipe_path('global_ft.py')}",
                  f"--workdir={workdir}"])
  assert exit_info.value.code == 1
  assert capsys.readouterr().err.strip().splitlines() == [says.format(w=workdir)]


def test_a_second_run_in_the_same_workdir_is_refused(data_dir, tmp_path):
  config = tiny_config("global", data_dir, steps=1)
  with workdir_lock.WorkdirLock(str(tmp_path)):  # a live run: this process
    with pytest.raises(workdir_lock.WorkdirBusyError,
                       match=rf"in use by another run \(pid {os.getpid()} on "
                             rf"{socket.gethostname()}.*delete .*RUNNING.lock"):
      loop.run(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "metrics.jsonl")  # the refused run wrote nothing
  assert not os.path.exists(tmp_path / workdir_lock.LOCK_FILE)  # released by its holder


def test_a_stale_lock_is_taken_over_and_another_hosts_lock_is_not(data_dir, tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  lock = tmp_path / workdir_lock.LOCK_FILE
  lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "x"}))
  assert loop.run(tiny_config("global", data_dir, steps=1), str(tmp_path))["step"] == 1
  assert not lock.exists()
  lock.write_text(json.dumps({"host": "other-host", "pid": dead.pid, "started": "x"}))
  with pytest.raises(workdir_lock.WorkdirBusyError, match=r"on other-host.*delete"):
    loop.run(tiny_config("global", data_dir, steps=2), str(tmp_path))


# -- Silent wrong results -------------------------------------------------------------------------


def test_extending_a_finished_run_replaces_the_model(data_dir, tmp_path):
  """2 steps, then the same workdir extended to 3: the model is step 3's, equal to a straight
  3-step run's (constant schedule); a half-written model folder does not block the rerun."""
  loop.run(tiny_config("goal", data_dir, steps=3), str(tmp_path / "straight"))
  workdir = str(tmp_path / "extended")
  loop.run(tiny_config("goal", data_dir, steps=2), workdir)
  assert model_checkpoint.load_info(os.path.join(workdir, "model")) == {"step": 2}
  loop.run(tiny_config("goal", data_dir, steps=3), workdir)
  assert model_checkpoint.load_info(os.path.join(workdir, "model")) == {"step": 3}
  assert_same_params(model_params(workdir), model_params(str(tmp_path / "straight")))
  assert not [d for d in os.listdir(workdir) if d.startswith("model.")]
  # A crash mid-write of an older version: params without a config.
  os.remove(os.path.join(workdir, "model", model_checkpoint.CONFIG_FILE))
  loop.run(tiny_config("goal", data_dir, steps=3), workdir)
  assert_same_params(model_params(workdir), model_params(str(tmp_path / "straight")))


@pytest.fixture(scope="module")
def half_paired_data_dir(tmp_path_factory, monkeypatch_module):
  """`synthetic` where the odd records lost their local pairs; and one where all did."""
  original = synthetic.read_examples
  roots = {}
  for name, keep in (("half", lambda i: i % 2 == 0), ("none", lambda i: False)):
    def read(*args, keep=keep, **kwargs):
      for i, example in enumerate(original(*args, **kwargs)):
        yield example if keep(i) else dataclasses.replace(example, local_pairs=())
    monkeypatch_module.setattr(synthetic, "read_examples", read)
    roots[name] = prepare_synthetic(str(tmp_path_factory.mktemp(name)), 8)
  monkeypatch_module.setattr(synthetic, "read_examples", original)
  return roots


@pytest.fixture(scope="module")
def monkeypatch_module():
  with pytest.MonkeyPatch.context() as patch:
    yield patch


def test_goal_refuses_a_dataset_without_local_pairs(half_paired_data_dir, tmp_path):
  config = tiny_config("goal", half_paired_data_dir["none"], steps=1)
  with pytest.raises(loop.SetupError,
                     match=r"(?s)has no local pairs.*python -m goal_jax.lism .*synthetic_lism"):
    loop.run(config, str(tmp_path / "goal"))
  no_local = tiny_config("goal", half_paired_data_dir["none"], steps=1, local=0.0, tsl_image=0.0,
                         tsl_text=0.0)  # GOAL's global-only ablation needs no pairs
  assert loop.run(no_local, str(tmp_path / "global"))["step"] == 1


def test_goal_logs_the_share_of_rows_with_a_local_pair(half_paired_data_dir, tmp_path):
  loop.run(tiny_config("goal", half_paired_data_dir["half"], steps=2), str(tmp_path))
  rows = metric_log.read_metrics(str(tmp_path / "metrics.jsonl"))
  assert [row["local_pair_share"] for row in rows] == [0.5, 0.5]  # one batch = all 8 records


def test_fine_tuning_without_an_init_is_refused_unless_random_is_asked(data_dir, tmp_path):
  config = tiny_config("global", data_dir, steps=1)
  config.model_init = ""
  with pytest.raises(loop.SetupError, match=r"(?s)no init checkpoint.*init=random"):
    loop.run(config, str(tmp_path))
  assert tiny_config("global", data_dir, steps=1).model_init == "random"


def test_resuming_with_another_recipe_is_refused_and_allowed_changes_are_recorded(data_dir,
                                                                                 tmp_path):
  workdir = str(tmp_path)
  loop.run(tiny_config("global", data_dir, steps=2), workdir)
  for field, value in (("optim.lr", 5e-3), ("seed", 1), ("method", "goal")):
    config = tiny_config("global", data_dir, steps=3)
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(loop.SetupError, match=rf"at step 2 .*{field}: .* -> {value!r}"):
      loop.run(config, workdir)
  extended = tiny_config("global", data_dir, steps=3)
  extended.log_every = 5
  assert loop.run(extended, workdir)["step"] == 3
  starts = {name: json.load(open(os.path.join(workdir, name)))
            for name in ("config_start_0.json", "config_start_2.json", "config.json")}
  assert starts["config_start_0.json"]["total_steps"] == 2
  assert starts["config_start_2.json"] == starts["config.json"]
  assert (starts["config.json"]["total_steps"], starts["config.json"]["log_every"]) == (3, 5)


def test_metrics_after_a_crash_are_not_written_twice(data_dir, tmp_path, monkeypatch):
  """Checkpoint at 2, crash in step 4 (step 3 logged): the rerun logs 3 and 4 once each."""
  config = tiny_config("global", data_dir, steps=4)
  config.checkpoint_every = 2
  loop.run(config, str(tmp_path / "straight"))
  fail_on_call(monkeypatch, sharding, "make_global_batch", 4)
  with pytest.raises(RuntimeError):
    loop.run(config, str(tmp_path / "crashed"))
  steps = lambda: [row["step"] for row in
                   metric_log.read_metrics(str(tmp_path / "crashed" / "metrics.jsonl"))]
  assert steps() == [1, 2, 3]
  monkeypatch.undo()
  loop.run(config, str(tmp_path / "crashed"))
  assert steps() == [1, 2, 3, 4]
  assert losses_of(str(tmp_path / "crashed")) == losses_of(str(tmp_path / "straight"))


def test_sigterm_during_start_up_exits_0_with_a_message(data_dir, tmp_path):
  """The signal arrives while the dataset is being opened: the command exits 0, says so, and
  leaves no checkpoint; the same command then trains."""
  workdir = tmp_path / "run"
  script = (
      "import os, signal, sys\n"
      "from absl import app\n"
      "from goal_jax.training import loop\n"
      "from goal_jax import train\n"
      "check_data = loop.check_data\n"
      "def signalled(config):\n"
      "  os.kill(os.getpid(), signal.SIGTERM)\n"
      "  return check_data(config)\n"
      "loop.check_data = signalled\n"
      "app.run(train.main)\n")
  args = ["--config=configs/global_ft.py:variant=tiny/8,batch=8,dataset=synthetic,"
          f"data_dir={data_dir},steps=1,init=random", f"--workdir={workdir}",
          "--config.progress_bar=False", "--config.tensorboard=False"]
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "Stopped by a termination signal at step 0; rerun the same command" in proc.stdout
  assert checkpoint_steps(str(workdir)) == [] and not os.path.exists(workdir / "model")
  proc = subprocess.run([sys.executable, "-m", "goal_jax.train", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert model_checkpoint.load_info(str(workdir / "model")) == {"step": 1}


def test_any_checkpoint_of_a_run_reads_as_a_model_and_a_workdir_says_where_they_are(data_dir,
                                                                                     tmp_path):
  """`load_model(<workdir>/checkpoints/<step>)` gives that step's CLIP (a 2-step run's model for
  step 2, the final model for step 3); the workdir itself is refused naming both."""
  config = tiny_config("global", data_dir, steps=3)
  config.checkpoint_every = 1
  workdir = str(tmp_path / "run")
  loop.run(config, workdir)
  loop.run(tiny_config("global", data_dir, steps=2), str(tmp_path / "two"))
  step = lambda n: os.path.join(workdir, "checkpoints", str(n))
  assert_same_params(jax.tree.leaves(model_checkpoint.load_model(step(2))[0]),
                     model_params(str(tmp_path / "two")))
  assert_same_params(jax.tree.leaves(model_checkpoint.load_model(step(3))[0]),
                     model_params(workdir))
  with pytest.raises(FileNotFoundError,
                     match=rf"(?s)its final model is {workdir}/model; a checkpoint of it is "
                           rf"{step(3)} \(steps 1, 2, 3\)"):
    model_checkpoint.load_model(workdir)


def test_ctrl_c_saves_like_sigterm_and_the_rerun_resumes(data_dir, tmp_path):
  """A first Ctrl-C (SIGINT) during training saves at the end of the step and exits 0, as SIGTERM
  does (no 60-line KeyboardInterrupt, no lost steps); the same command then finishes the run."""
  workdir = tmp_path / "run"
  script = (
      "import os, signal\n"
      "from absl import app\n"
      "from goal_jax.training import preemption\n"
      "from goal_jax import train\n"
      "should_stop = preemption.PreemptionGuard.should_stop\n"
      "def interrupted(self, step):\n"
      "  if step == 2:\n"
      "    os.kill(os.getpid(), signal.SIGINT)\n"
      "  return should_stop(self, step)\n"
      "preemption.PreemptionGuard.should_stop = interrupted\n"
      "app.run(train.main)\n")
  args = ["--config=configs/global_ft.py:variant=tiny/8,batch=8,dataset=synthetic,"
          f"data_dir={data_dir},steps=4,init=random", f"--workdir={workdir}",
          "--config.progress_bar=False", "--config.tensorboard=False",
          "--config.optim.warmup_steps=0"]
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "Ctrl-C: saving at the end of this step" in proc.stdout
  assert "Stopped by a termination signal at step 2; rerun the same command" in proc.stdout
  assert "KeyboardInterrupt" not in proc.stderr and checkpoint_steps(str(workdir)) == ["2"]
  proc = subprocess.run([sys.executable, "-m", "goal_jax.train", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert model_checkpoint.load_info(str(workdir / "model")) == {"step": 4}


def test_a_run_saved_before_a_field_existed_resumes_at_its_old_meaning(tmp_path):
  """`resume.ADDED`: a saved config without `input.local_context` resumes at 0 (what the code
  did before the field) as unchanged, and is refused at any other value."""
  config = ml_collections.ConfigDict({"seed": 0, "input": {"batch_size": 8, "local_context": 0}})
  saved = resume.as_plain(config)
  del saved["input"]["local_context"]
  (tmp_path / resume.CONFIG_FILE).write_text(json.dumps(saved))
  assert resume.check_and_record(str(tmp_path), config, 2, write=False) == {}
  config.input.local_context = 77
  with pytest.raises(resume.ResumeConfigError, match=r"input.local_context: 0 -> 77"):
    resume.check_and_record(str(tmp_path), config, 2, write=False)
