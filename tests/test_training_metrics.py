"""MetricWriter (JSONL, TensorBoard), the non-finite guard, Chrono and the progress bar."""
import io
import json
import math
import os
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goal_jax.training import finite, metric_log, progress


def test_jsonl_round_trip_from_device_values(tmp_path):
  with metric_log.MetricWriter(str(tmp_path), log_every=10) as writer:
    assert [s for s in range(1, 31) if writer.due(s, total_steps=25)] == [1, 10, 20, 25, 30]
    on_device = {"loss": jnp.float32(0.25), "lr": jnp.asarray(5e-6), "grad_norm": np.float64(1.5)}
    with jax.transfer_guard("disallow"):  # the fetch is one explicit device_get
      host = writer.write(10, on_device)
    assert host == {"loss": 0.25, "lr": float(np.float32(5e-6)), "grad_norm": 1.5}
    writer.write(20, {"loss": 0.125, "bad": float("nan")})
  with metric_log.MetricWriter(str(tmp_path)) as writer:  # a resumed run appends
    writer.write(30, {"loss": 0.0625})
  lines = open(tmp_path / "metrics.jsonl").read().splitlines()
  assert json.loads(lines[0]) == {"step": 10, "loss": 0.25, "lr": float(np.float32(5e-6)),
                                  "grad_norm": 1.5}
  got = metric_log.read_metrics(str(tmp_path / "metrics.jsonl"))
  assert [m["step"] for m in got] == [10, 20, 30]
  assert math.isnan(got[1]["bad"]) and got[2] == {"step": 30, "loss": 0.0625}


def read_event_scalars(directory):
  """Parses TFRecord-framed Event protos (length, crc, data, crc) without TensorBoard."""
  from tensorboardX.proto import event_pb2  # noqa: PLC0415
  scalars = []
  for name in sorted(os.listdir(directory)):
    data = open(os.path.join(directory, name), "rb").read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      scalars += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
  return scalars


def test_tensorboard_scalars(tmp_path):
  with metric_log.MetricWriter(str(tmp_path), tensorboard=True) as writer:
    writer.write(3, {"loss": 0.5})
    writer.write(7, {"loss": 0.25, "lr": 1e-3})
  got = read_event_scalars(str(tmp_path / "tensorboard"))
  assert got == [("loss", 3, 0.5), ("loss", 7, 0.25), ("lr", 7, pytest.approx(1e-3))]


def test_runtime_never_imports_torch(tmp_path):
  script = ("import sys\n"
            "from goal_jax.training import checkpointing, metric_log, optimizer, preemption\n"
            "from goal_jax import sharding\n"
            "from goal_jax.training import progress\n"
            "from goal_jax import config_utils\n"
            f"with metric_log.MetricWriter({str(tmp_path)!r}, tensorboard=True) as w:\n"
            "  w.write(1, {'loss': 1.0})\n"
            "print('torch' in sys.modules)\n")  # not even the None that hid it
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
  assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]
  assert read_event_scalars(str(tmp_path / "tensorboard")) == [("loss", 1, 1.0)]


def test_non_main_process_writes_nothing(tmp_path):
  with metric_log.MetricWriter(str(tmp_path / "w"), is_main=False) as writer:
    assert writer.write(1, {"loss": jnp.float32(2.0)}) == {"loss": 2.0}
  assert not os.path.exists(tmp_path / "w")


def test_resumed_writer_drops_the_steps_after_the_checkpoint(tmp_path):
  """A crash after step 5 with the checkpoint at 3: the resumed writer keeps steps 1-3 (and the
  evaluation line of step 3), drops 4, 5 and a line cut by the crash, then appends."""
  path = tmp_path / "metrics.jsonl"
  lines = [{"step": s, "loss": 10.0 - s} for s in range(1, 6)]
  lines.insert(3, {"step": 3, "eval/x": 0.5})
  path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 6, "lo')
  with metric_log.MetricWriter(str(tmp_path), resume_step=3) as writer:
    writer.write(4, {"loss": jnp.float32(1.5)})
  assert metric_log.read_metrics(str(path)) == [
      {"step": 1, "loss": 9.0}, {"step": 2, "loss": 8.0}, {"step": 3, "loss": 7.0},
      {"step": 3, "eval/x": 0.5}, {"step": 4, "loss": 1.5}]
  assert metric_log.drop_steps_after(str(path), 4) == 0  # nothing to drop: file untouched


def test_state_check_names_the_non_finite_leaves():
  state = {"params": {"a": jnp.ones(3), "b": jnp.array([1.0, np.inf])},
           "opt_state": {"mu": jnp.array([np.nan])}, "step": jnp.int32(7),
           "rng": jax.random.key(0)}
  with pytest.raises(finite.NonFiniteError,
                     match=r"step 7: .* in 2 of 3 leaves \(e.g. opt_state/mu, params/b\)"):
    finite.assert_state_finite(7, state)
  finite.assert_state_finite(7, {**state, "params": {"a": jnp.ones(3)}, "opt_state": {}})


def test_assert_finite_names_step_and_ids():
  finite.assert_finite(3, {"loss": 1.0, "grad_norm": 2.0}, [1, 2])
  with pytest.raises(finite.NonFiniteError,
                     match=r"step 12: non-finite \{'loss': inf\}; batch record ids: \[4, 17\]"):
    finite.assert_finite(12, {"loss": float("inf"), "grad_norm": 2.0}, np.array([4, 17]))


def test_guard_checks_one_step_late_and_on_flush():
  guard = finite.NonFiniteGuard(keys=("loss",))
  guard(1, {"loss": jnp.float32(0.5), "other": jnp.float32(np.nan)}, np.array([0, 1]))
  guard(2, {"loss": jnp.float32(np.nan)}, np.array([2, 3]))  # step 1 checked: fine
  with pytest.raises(finite.NonFiniteError, match=r"step 2: .*'loss': nan.*ids: \[2, 3\]"):
    guard(3, {"loss": jnp.float32(0.1)}, np.array([4, 5]))
  guard.flush()  # step 3 is finite
  guard(4, {"loss": jnp.float32(-np.inf)}, np.array(["docci/7", "dci/9"]))
  with pytest.raises(finite.NonFiniteError, match=r"step 4: .*-inf.*\['docci/7', 'dci/9'\]"):
    guard.flush()


class FakeClock:

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_chrono_rates_skip_compile_and_pauses():
  clock = FakeClock()
  chrono = progress.Chrono(total_steps=100, examples_per_step=32, clock=clock)
  clock.now += 30.0  # step 1 includes compilation
  assert chrono.tick(1) == {}
  clock.now += 9 * 0.5  # steps 2..10 at 0.5 s each
  with chrono.paused():
    clock.now += 60.0  # an evaluation
  clock.now += 0.0
  got = chrono.tick(10)
  assert got == pytest.approx({"step_time_s": 0.5, "examples_per_s": 64.0, "eta_s": 45.0})
  clock.now += 10 * 0.25
  got = chrono.tick(20)
  mean = (4.5 + 2.5) / 19
  assert got == pytest.approx({"step_time_s": 0.25, "examples_per_s": 128.0, "eta_s": 80 * mean})


def test_progress_bar_resumes_at_step():
  out = io.StringIO()
  bar = progress.ProgressBar(total_steps=10, initial_step=4, file=out)
  bar.update(7, loss=0.123456)
  bar.close()
  text = out.getvalue()
  assert "7/10" in text and "loss=0.1235" in text
