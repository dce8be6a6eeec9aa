"""Checkpoint round trips, keep-last-K, exact resume of a toy train loop, and SIGTERM handling.

`train_toy` is a miniature trainer built only from the trainer's pieces (sharded init, optimizer,
global batches, Grain iterator, Checkpointer, PreemptionGuard, MetricWriter, NonFiniteGuard) under
`jax.transfer_guard("disallow")`; the SIGTERM test runs it in a subprocess.

The corruption tests damage a copy of two saved steps (32 and 64) the way disks and copy tools do
and check that resuming falls back to the intact step with its exact values and data position.
"""
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from goal_jax import sharding
from goal_jax.training import checkpointing, finite, metric_log, optimizer, preemption

BATCH = 8
FSDP = [(".*kernel", "fsdp(min_size_mb=0)")]


class ToyRegressor(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1, name="head")(nn.tanh(nn.Dense(8, name="hidden")(x)))[:, 0]


def make_example(index):
  """Record `index` of a deterministic toy dataset (what a Grain `map` would decode)."""
  rng = np.random.default_rng(int(index))
  x = rng.normal(size=4).astype(np.float32)
  return {"x": x, "y": np.float32(np.sin(x.sum())), "record_index": np.int32(index)}


def make_iterator(batch=BATCH):
  dataset = grain.MapDataset.range(40).seed(3).shuffle().map(make_example).repeat()
  return iter(dataset.to_iter_dataset().batch(batch, drop_remainder=True))


def init_fn(rng, tx):
  params = ToyRegressor().init(rng, jnp.zeros((1, 4)))["params"]
  return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
          "rng": jax.random.fold_in(rng, 1)}


def train_step(state, batch, tx):
  # The state's rng drives input noise, so a wrongly restored rng changes the result.
  step_rng = jax.random.fold_in(state["rng"], state["step"])
  noise = 0.01 * jax.random.normal(step_rng, batch["x"].shape)

  def loss_fn(params):
    pred = ToyRegressor().apply({"params": params}, batch["x"] + noise)
    return jnp.mean((pred - batch["y"]) ** 2)

  loss, grads = jax.value_and_grad(loss_fn)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
         "step": state["step"] + 1, "rng": state["rng"]}
  return new, {"loss": loss}


@functools.cache
def compiled_toy(total_steps):
  """The optimizer and jitted functions, shared between runs only to save compile time."""
  mesh = sharding.make_mesh([("data", -1)])
  abstract_params = jax.eval_shape(ToyRegressor().init, jax.random.key(0), jnp.zeros((1, 4)))
  tx, _ = optimizer.make_optimizer(
      dict(lr=0.05, schedule="cosine", total_steps=total_steps, weight_decay=0.01),
      abstract_params["params"])
  rng = jax.device_put(jax.random.key(0), sharding.replicated(mesh))  # guard-proof
  init, abstract = sharding.sharded_init(lambda rng: init_fn(rng, tx), rng, mesh=mesh,
                                         strategy=FSDP)
  step_fn = jax.jit(lambda s, b: train_step(s, b, tx), donate_argnums=(0,),
                    out_shardings=(sharding.shardings_of(abstract), None))
  return mesh, init, abstract, step_fn


def train_toy(workdir, total_steps, *, save_every, stop_at=None, step_sleep=0.0, ready_file=None):
  """Trains until `total_steps`, a SIGTERM, or `stop_at` (a crash: no extra save). Returns state."""
  mesh, init, abstract, step_fn = compiled_toy(total_steps)
  data_iter = make_iterator()
  finite_guard = finite.NonFiniteGuard()
  with (checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=save_every,
                                   keep=2) as ckpt,
        metric_log.MetricWriter(workdir, log_every=2) as writer,
        preemption.PreemptionGuard() as preempted,
        jax.set_mesh(mesh), jax.transfer_guard("disallow")):
    state = ckpt.restore_or_init(abstract, init, data_iter)
    step = int(jax.device_get(state["step"]))
    while step < total_steps:
      host_batch = next(data_iter)
      state, step_metrics = step_fn(state, sharding.make_global_batch(host_batch, mesh))
      step += 1
      finite_guard(step, step_metrics, host_batch["record_index"])
      if writer.due(step, total_steps):
        writer.write(step, step_metrics)
      if step == stop_at:
        return state
      if preempted.should_stop(step):
        finite_guard.flush()
        ckpt.save(step, state, data_iter, force=True)
        print(f"preempted at step {step}", flush=True)
        break
      ckpt.save(step, state, data_iter)
      if ready_file and step == 3:
        open(ready_file, "w").close()
      time.sleep(step_sleep)
    finite_guard.flush()
  return state


def abstract_of(state):
  """ShapeDtypeStructs carrying each leaf's sharding: a restore target for a state in hand."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def assert_trees_equal(a, b):
  a, b = jax.device_get(a), jax.device_get(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_restores_state_shardings_and_next_batch(tmp_path):
  mesh = sharding.make_mesh([("data", -1)])
  tx = optax.adamw(1e-2)
  init, abstract = sharding.sharded_init(lambda rng: init_fn(rng, tx), jax.random.key(1),
                                         mesh=mesh, strategy=FSDP)
  state = init()
  state["opt_state"][0].mu["hidden"]["kernel"] += 0.5  # make the state non-trivial
  data_iter = make_iterator()
  for _ in range(3):
    next(data_iter)
  with checkpointing.Checkpointer(str(tmp_path), save_every=10) as ckpt:
    assert ckpt.save(7, state, data_iter, force=True)
  expected_next = next(data_iter)

  fresh_iter = make_iterator()
  with checkpointing.Checkpointer(str(tmp_path), save_every=10) as ckpt:
    assert ckpt.latest_step == 7
    restored = ckpt.restore(abstract, fresh_iter)
  assert_trees_equal(restored, state)
  assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
  assert restored["params"]["hidden"]["kernel"].sharding.spec == P(None, "data")  # (4, 8)
  assert restored["opt_state"][0].nu["hidden"]["kernel"].sharding.spec == P(None, "data")
  got_next = next(fresh_iter)
  for key in expected_next:
    np.testing.assert_array_equal(got_next[key], expected_next[key])
  assert not np.array_equal(got_next["record_index"], next(make_iterator())["record_index"])


def test_save_every_and_keep_last(tmp_path):
  state = {"w": jnp.arange(3.0)}
  with checkpointing.Checkpointer(str(tmp_path), save_every=2, keep=2) as ckpt:
    saved = [ckpt.save(step, {"w": state["w"] + step}) for step in range(1, 8)]
    assert saved == [False, True, False, True, False, True, False]
    assert ckpt.save(7, {"w": state["w"] + 7}, force=True)
    assert not ckpt.save(7, {"w": state["w"] + 7}, force=True)  # already there
    ckpt.wait_until_finished()
    assert ckpt.all_steps == [6, 7]
    assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [6, 7]
    abstract = abstract_of(state)
    np.testing.assert_array_equal(ckpt.restore(abstract, step=6)["w"], state["w"] + 6)
    with pytest.raises(ValueError, match="no data iterator state"):
      ckpt.restore(abstract, make_iterator())
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    checkpointing.Checkpointer(str(tmp_path / "empty"), save_every=1).restore(abstract)


def test_resumed_training_is_bit_identical(tmp_path):
  total = 8
  straight = train_toy(str(tmp_path / "straight"), total, save_every=100)
  interrupted = train_toy(str(tmp_path / "resumed"), total, save_every=4, stop_at=7)
  resumed = train_toy(str(tmp_path / "resumed"), total, save_every=4)  # restarts from step 4
  assert int(resumed["step"]) == total
  assert_trees_equal(resumed, straight)
  assert not np.array_equal(np.asarray(interrupted["params"]["head"]["kernel"]),
                            np.asarray(straight["params"]["head"]["kernel"]))
  logged = metric_log.read_metrics(str(tmp_path / "resumed" / "metrics.jsonl"))
  assert [m["step"] for m in logged] == [1, 2, 4, 6, 6, 8]  # the resumed run redoes step 6
  assert logged[3] == logged[4]
  straight_log = metric_log.read_metrics(str(tmp_path / "straight" / "metrics.jsonl"))
  assert logged[-1] == straight_log[-1]


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  ready = tmp_path / "ready"
  script = (f"import sys; sys.path.insert(0, {tests_dir!r});"
            "import test_training_checkpointing as t;"
            f"t.train_toy({str(tmp_path)!r}, 10_000, save_every=10_000, step_sleep=0.05,"
            f" ready_file={str(ready)!r})")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  child = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while not ready.exists():
      assert child.poll() is None, child.communicate()[1][-3000:]
      assert time.time() < deadline, "the child never reached step 3"
      time.sleep(0.1)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
  finally:
    if child.poll() is None:
      child.kill()
  assert child.returncode == 0, err[-3000:]
  stopped_at = int(out.strip().split()[-1])
  assert 3 <= stopped_at < 10_000
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), save_every=10_000)
  assert ckpt.all_steps == [stopped_at]
  # The forced save holds exactly the state of an uninterrupted run stopped at that step.
  reference = train_toy(str(tmp_path / "reference"), 10_000, save_every=10_000, stop_at=stopped_at)
  _, _, abstract, _ = compiled_toy(10_000)  # the target `train_toy` restores into
  assert_trees_equal(ckpt.restore(abstract), reference)
  ckpt.close()


def test_preemption_guard_restores_previous_handler():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.PreemptionGuard() as guard:
    assert not guard.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)  # Python runs the handler between bytecodes of the main thread
    assert guard.should_stop(2) and guard.received == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) is before


# --- Corrupt checkpoints: steps 32 and 64 of a toy state, damaged in a copy, then resumed.

CORRUPTION_STEPS = (32, 64)


def toy_state(step):
  """Values independent of the checkpoint code: what step `step` must restore to."""
  w = np.random.default_rng(step).normal(size=(64, 64)).astype(np.float32)  # incompressible
  return {"w": jnp.asarray(w), "step": jnp.asarray(step, jnp.int32)}


def batches_drawn(step):
  return step // 16  # the data position saved with `step`


def nth_batch(n):
  data_iter = make_iterator()
  for _ in range(n):
    next(data_iter)
  return next(data_iter)


@pytest.fixture(scope="module")
def saved_steps(tmp_path_factory):
  """A checkpoint directory holding steps 32 and 64, each with its data iterator position."""
  directory = tmp_path_factory.mktemp("pristine") / "checkpoints"
  data_iter = make_iterator()
  with checkpointing.Checkpointer(str(directory), save_every=32) as ckpt:
    for step in CORRUPTION_STEPS:
      while data_iter.get_state()["next_index"] < batches_drawn(step) * BATCH:
        next(data_iter)
      assert ckpt.save(step, toy_state(step), data_iter)
  return directory


def copy_of(saved_steps, tmp_path):
  directory = tmp_path / "checkpoints"
  shutil.copytree(saved_steps, directory)
  return directory


def largest_state_file(step_dir):
  paths = [os.path.join(root, name) for root, _, names in os.walk(step_dir / "state")
           for name in names]
  return max(paths, key=os.path.getsize)


def flip_bytes(step_dir):
  path = largest_state_file(step_dir)
  data = bytearray(open(path, "rb").read())
  assert len(data) > 4000  # the raw float32 array: a flip changes values, not the framing
  for i in range(len(data) // 2, len(data) // 2 + 400):
    data[i] ^= 0xFF
  open(path, "wb").write(bytes(data))


def truncate_file(step_dir):
  path = largest_state_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


def delete_data_iter(step_dir):
  shutil.rmtree(step_dir / "data_iter")


def cut_json(relative):
  def cut(step_dir):
    text = (step_dir / relative).read_text()
    json.loads(text)  # it was JSON before the cut
    (step_dir / relative).write_text(text[:len(text) // 2])
  return cut


def restore_or_init(directory, data_iter):
  abstract = abstract_of(toy_state(0))
  with checkpointing.Checkpointer(str(directory), save_every=32) as ckpt:
    return ckpt.restore_or_init(abstract, lambda: pytest.fail("init_fn called"), data_iter)


def unusable_warnings(caplog):
  return [r.getMessage() for r in caplog.records
          if r.levelno == logging.WARNING and "is unusable" in r.getMessage()]


def test_checksums_are_written_once_steps_are_final(tmp_path):
  data_iter = make_iterator()
  with checkpointing.Checkpointer(str(tmp_path), save_every=1, keep=2) as ckpt:
    assert ckpt.save(1, toy_state(1), data_iter)
    assert ckpt.save(2, toy_state(2), data_iter)  # waits for step 1, then checksums it
    assert (tmp_path / "1" / checkpointing.MANIFEST).is_file()
    assert ckpt.save(3, toy_state(3), data_iter)
    ckpt.wait_until_finished()
    # Step 1 went to max_to_keep; checksumming must not have recreated or blocked its deletion.
    assert sorted(os.listdir(tmp_path)) == ["2", "3"]
  for step in (2, 3):
    step_dir = tmp_path / str(step)
    files = {str(p.relative_to(step_dir)): p for p in step_dir.rglob("*")
             if p.is_file() and p.name != checkpointing.MANIFEST}
    assert any(name.startswith("state/") for name in files)
    assert any(name.startswith("data_iter/") for name in files)
    want = {name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for name, p in files.items()}
    assert json.loads((step_dir / checkpointing.MANIFEST).read_text())["files"] == want


def test_flipped_bytes_fall_back_to_previous_step_and_keep_the_bad_one(saved_steps, tmp_path,
                                                                        caplog):
  directory = copy_of(saved_steps, tmp_path)
  flip_bytes(directory / "64")
  abstract = abstract_of(toy_state(0))
  data_iter = make_iterator()
  with checkpointing.Checkpointer(str(directory), save_every=32) as ckpt:
    with pytest.raises(checkpointing.CheckpointError,
                       match=rf"checkpoint {directory}/64 is corrupt: state/.* has changed"):
      ckpt.restore(abstract, step=64)
    with caplog.at_level(logging.WARNING):
      state = ckpt.restore_or_init(abstract, lambda: pytest.fail("init_fn called"), data_iter)
    assert_trees_equal(state, toy_state(32))
    got, want = next(data_iter), nth_batch(batches_drawn(32))
    np.testing.assert_array_equal(got["record_index"], want["record_index"])
    [warning] = unusable_warnings(caplog)
    assert f"{directory}/64 is unusable" in warning and "sha256 differs" in warning
    assert f"moved it to {directory}/64.corrupt" in warning and "resuming from step 32" in warning
    assert "\n" not in warning
    assert ckpt.all_steps == [32]
    # The resumed run reaches step 64 again and must be able to save it.
    assert ckpt.save(64, toy_state(640), data_iter)
  assert sorted(os.listdir(directory)) == ["32", "64", "64.corrupt"]
  assert (directory / "64.corrupt" / "state").is_dir()  # kept for the user
  with caplog.at_level(logging.WARNING):
    assert_trees_equal(restore_or_init(directory, make_iterator()), toy_state(640))
  assert len(unusable_warnings(caplog)) == 1  # the new step 64 is intact


FAULTS = {  # name: (damage to step 64, what the warning says with checksums, without)
    "truncated_file": (truncate_file, r"state/.* has \d+ bytes, checksums.json says \d+",
                       r"OUT_OF_RANGE"),
    "deleted_data_iter": (delete_data_iter, r"data_iter/.* is missing",
                          r"has no data iterator state"),
    "cut_checkpoint_metadata": (cut_json("_CHECKPOINT_METADATA"), r"_CHECKPOINT_METADATA has",
                                r"_CHECKPOINT_METADATA is not valid JSON"),
    "cut_data_iter_json": (cut_json("data_iter/process_0-of-1.json"),
                           r"process_0-of-1.json has", r"process_0-of-1.json is not valid JSON"),
}


@pytest.mark.parametrize("checksums", [True, False], ids=["checksums", "no_checksums"])
@pytest.mark.parametrize("fault", FAULTS)
def test_damaged_latest_step_falls_back(saved_steps, tmp_path, caplog, fault, checksums):
  directory = copy_of(saved_steps, tmp_path)
  damage, with_checksums, without_checksums = FAULTS[fault]
  if not checksums:  # as written by an older version: only what Orbax itself checks
    for step in CORRUPTION_STEPS:
      os.remove(directory / str(step) / checkpointing.MANIFEST)
  damage(directory / "64")
  data_iter = make_iterator()
  with caplog.at_level(logging.WARNING):
    state = restore_or_init(directory, data_iter)
  assert_trees_equal(state, toy_state(32))
  np.testing.assert_array_equal(next(data_iter)["record_index"],
                                nth_batch(batches_drawn(32))["record_index"])
  [warning] = unusable_warnings(caplog)
  assert warning.startswith(f"Checkpoint {directory}/64 is unusable (")
  assert re.search(with_checksums if checksums else without_checksums, warning), warning
  assert sorted(os.listdir(directory)) == ["32", "64.corrupt"]


def test_all_steps_corrupt_is_one_clear_error(saved_steps, tmp_path):
  directory = copy_of(saved_steps, tmp_path)
  flip_bytes(directory / "64")
  truncate_file(directory / "32")
  os.remove(directory / "32" / checkpointing.MANIFEST)
  with pytest.raises(checkpointing.CheckpointError) as error:
    restore_or_init(directory, make_iterator())
  message = str(error.value)
  assert message.startswith(f"no intact checkpoint in {directory} (tried step 64: state/")
  assert "sha256 differs" in message and "step 32: ValueError: OUT_OF_RANGE" in message
  assert "delete these step directories" in message and "use a new workdir" in message
  assert error.value.__cause__ is None and error.value.__suppress_context__  # no chained traces
  assert sorted(os.listdir(directory)) == ["32", "64"]  # nothing moved when nothing restored


def test_step_without_checksums_still_restores(saved_steps, tmp_path, caplog):
  directory = copy_of(saved_steps, tmp_path)
  os.remove(directory / "64" / checkpointing.MANIFEST)
  data_iter = make_iterator()
  with caplog.at_level(logging.INFO, logger="absl"):
    state = restore_or_init(directory, data_iter)
  assert_trees_equal(state, toy_state(64))
  np.testing.assert_array_equal(next(data_iter)["record_index"],
                                nth_batch(batches_drawn(64))["record_index"])
  assert any(f"{directory}/64 has no checksums.json" in r.getMessage() and r.levelno == logging.INFO
             for r in caplog.records)
  assert not unusable_warnings(caplog)
  assert sorted(os.listdir(directory)) == ["32", "64"]
