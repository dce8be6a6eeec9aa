r"""Fine-tunes CLIP with one method (global, GOAL, MulCLIP, Long-CLIP, FineLIP) from one config.

  python -m goal_jax.train --config=configs/goal.py:demo --workdir=/tmp/goal_demo
  python -m goal_jax.train --config=configs/mulclip.py:init=/ckpt/clip_b16,dataset=docci \
      --workdir=/runs/mulclip --config.input.data_dir=gs://bucket/tfds

`--config.x=y` overrides any field. The loop is `goal_jax.training.loop.run`; the `demo` arg runs
`goal_jax.demo` (embedded data, a cached tiny pretrained CLIP, then this method's fine-tuning).
"""
import signal
import sys

from absl import flags
from ml_collections import config_flags

from goal_jax import cli
from goal_jax import config_utils
from goal_jax import demo
from goal_jax import distributed
from goal_jax import files
from goal_jax.training import checkpointing
from goal_jax.training import loop
from goal_jax.training import finite
from goal_jax.training import preemption
from goal_jax.training import workdir_lock

_CONFIG = config_flags.DEFINE_config_file(
    "config", None,
    "A method config and its knobs, e.g. configs/goal.py:init=/ckpt/clip_b16,dataset=docci_lism "
    "(the README's 'Methods and configs' lists the knobs). Any field is set with "
    "--config.<field>=<value>, e.g. --config.optim.lr=1e-5; --print_config lists them all.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "The run's folder: checkpoints/, metrics.jsonl, config.json, "
    "eval_<step>.json, tensorboard/, model/. Rerunning the same command there resumes.")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print the resolved config (after the knobs and --config.* "
    "overrides) and exit without training.")
# A bad setup, a busy or unwritable workdir, a non-finite state, no intact checkpoint: one
# `error:` line each.
EXPECTED = (loop.SetupError, workdir_lock.WorkdirBusyError, files.NotWritableError,
            finite.NonFiniteError, checkpointing.CheckpointError)


def main(argv):
  cli.check_args(argv)
  if _PRINT_CONFIG.value:
    print(_CONFIG.value)
    return
  if _WORKDIR.value is None:
    cli.fail("--workdir is required: the run's folder (rerunning there resumes)", code=2)
  workdir = _WORKDIR.value
  files.check_writable(workdir, "--workdir", "pass --workdir=<a writable folder>")
  distributed.initialize()  # several processes (TPU pod, GPU cluster): before any JAX use
  try:
    # From here on SIGTERM stops cleanly (exit 0), also during start-up and data preparation.
    with preemption.PreemptionGuard(signals=(signal.SIGTERM, signal.SIGINT)):
      result = _train(_CONFIG.value, workdir)
  except loop.EvaluationError as e:  # the model is saved: say how to evaluate it
    raise cli.Error(f"{e}. The trained model is saved in {workdir}/model; evaluate it "
                    f"with: python -m goal_jax.evaluate --checkpoint={workdir}/model") from None
  if result.get("preempted"):
    print(f"Stopped by a termination signal at step {result['step']}; rerun the same command "
          "to resume.", flush=True)


def _train(config, workdir: str) -> dict:
  if config.get("demo"):
    return demo.run_demo(config, workdir)
  return loop.run(config, workdir)


if __name__ == "__main__":
  try:
    sys.argv = config_utils.resolve_config_argv(sys.argv)
  except ValueError as e:
    cli.fail(str(e), code=2)
  cli.run(main, expected=EXPECTED)
