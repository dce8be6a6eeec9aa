"""The trainer: each method learns, ablations switch exactly their term, resume is bit-exact,
set-up failures name the missing file and the command that makes it, and the demo runs."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goal_jax.configs import global_ft, goal, longclip, mulclip
from goal_jax import methods
from goal_jax.data import pipeline
from goal_jax.data import prepare as data_prepare
from goal_jax.data import builder as data_builder
from goal_jax.data import synthetic
from goal_jax.evaluation import runner
from goal_jax.models import checkpoint as model_checkpoint
from goal_jax.models import clip
from goal_jax.training import loop
from goal_jax.training import finite
from goal_jax.training import metric_log
from goal_jax.training import preemption

CONFIGS = {"global": global_ft, "goal": goal, "mulclip": mulclip, "longclip": longclip}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 8


def prepare_synthetic(root: str, train_records: int, **options) -> str:
  """Prepares `synthetic` into `root` with `train_records` training and one batch of test records
  (`options`: more of `prepare.prepare`'s)."""
  sizes = dict(synthetic.SPLIT_SIZES)
  synthetic.SPLIT_SIZES.update(train=train_records, test=BATCH, test_hard=BATCH,
                               test_transfer=BATCH, test_transfer_hard=BATCH)
  try:
    data_prepare.prepare("synthetic", root, verbose=False, **options)
  finally:
    synthetic.SPLIT_SIZES.update(sizes)
  return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """`synthetic` with one batch of training records: every step sees the same 8 examples."""
  return prepare_synthetic(str(tmp_path_factory.mktemp("tfds")), BATCH)


def tiny_config(method, data_dir, steps, **loss):
  config = CONFIGS[method].get_config(
      f"variant=tiny/8,batch={BATCH},dataset=synthetic,data_dir={data_dir},steps={steps},"
      "init=random")
  config.model.dtype = "float32"
  config.model.text_context = 96
  config.input.sentence_context = 32
  config.input.max_sentences = 4
  config.optim.schedule = "constant"
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 0
  config.optim.weight_decay = 0.0
  config.log_every = 1
  config.checkpoint_every = 1000
  config.progress_bar = False
  config.tensorboard = False
  if method == "mulclip":
    config.loss.calibration_tokens = 8
    config.optim.param_groups = ()
  if method == "longclip":
    config.loss.num_components = 4
    config.reset_logit_scale = None
  for name, value in loss.items():
    config.loss.weights[name] = value
  return config


def losses_of(workdir):
  return [row["loss"] for row in metric_log.read_metrics(os.path.join(workdir, "metrics.jsonl"))
          if "loss" in row]


@pytest.mark.parametrize("method", ["global", "goal", "mulclip"])
def test_a_few_steps_lower_the_loss(method, data_dir, tmp_path):
  config = tiny_config(method, data_dir, steps=6)
  out = loop.run(config, str(tmp_path))
  losses = losses_of(str(tmp_path))
  assert out["step"] == 6 and len(losses) == 6
  assert all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.05, losses
  # The finished model is saved as a model checkpoint the other commands read.
  params, model_config = model_checkpoint.load_model(os.path.join(str(tmp_path), "model"))
  assert model_config.context_length == 96
  assert params["text"]["positional_embedding"].shape == (96, model_config.text_width)


ABLATIONS = {"goal": ("tsl_image", "local"), "mulclip": ("sap", "wpr_text"),
             "longclip": ("short",)}


@pytest.mark.parametrize("method", sorted(ABLATIONS))
def test_ablation_switch_changes_exactly_its_term(method, data_dir):
  """Zeroing a weight removes that term; every other term keeps its value."""
  config = tiny_config(method, data_dir, steps=1)
  model_config = clip.get_model_config("tiny/8", context_length=96)
  data = pipeline.default_config()
  data.update(dict(dataset="synthetic", batch_size=BATCH, image_size=32, patch_size=8,
                   text_context=96, sentence_context=32, max_sentences=4,
                   fields=methods.get(method).input_fields))
  batch = next(iter(pipeline.make_dataset(data, data_dir, train=True)))
  batch = {k: jnp.asarray(v) for k, v in batch.items() if k != "record_index"}
  rng = jax.random.key(0)
  params = {"clip": clip.init_params(model_config, rng),
            **methods.get(method).init_extra_params(config.loss, model_config, rng)}
  full_loss, full_terms = methods.get(method).make_loss_fn(model_config, config.loss)(params, batch)
  for term in ABLATIONS[method]:
    ablated = tiny_config(method, data_dir, steps=1, **{term: 0.0})
    loss, terms = methods.get(method).make_loss_fn(model_config, ablated.loss)(params, batch)
    assert set(terms) == set(full_terms) - {term}
    for name, value in terms.items():
      np.testing.assert_allclose(value, full_terms[name], rtol=1e-5, err_msg=name)
    weight = config.loss.weights[term]
    np.testing.assert_allclose(full_loss - loss, weight * full_terms[term], rtol=1e-4, atol=1e-5)


def test_tsl_matrix_form_changes_only_the_tsl_terms(data_dir):
  """`config.loss.tsl_form=matrix` reaches the loss: the TSL terms change, global/local do not."""
  model_config = clip.get_model_config("tiny/8", context_length=96)
  data = pipeline.default_config()
  data.update(dict(dataset="synthetic", batch_size=BATCH, image_size=32, patch_size=8,
                   text_context=96, fields=methods.get("goal").input_fields))
  batch = next(iter(pipeline.make_dataset(data, data_dir, train=True)))
  batch = {k: jnp.asarray(v) for k, v in batch.items() if k != "record_index"}
  params = {"clip": clip.init_params(model_config, jax.random.key(0))}
  config = tiny_config("goal", data_dir, steps=1)
  _, diagonal = methods.get("goal").make_loss_fn(model_config, config.loss)(params, batch)
  config.loss.tsl_form = "matrix"
  _, matrix = methods.get("goal").make_loss_fn(model_config, config.loss)(params, batch)
  for name in ("global", "local"):
    np.testing.assert_allclose(matrix[name], diagonal[name], rtol=1e-6)
  for name in ("tsl_image", "tsl_text"):
    assert not np.isclose(matrix[name], diagonal[name], rtol=1e-3), name


def test_resume_is_bit_identical(data_dir, tmp_path, monkeypatch):
  """4 steps straight == 2 steps, a preemption (save and exit), and 2 resumed steps. The resumed
  steps normalise images on the host, the others on the device (the recipe's): the same run."""
  config = tiny_config("goal", data_dir, steps=4)
  assert config.input.normalize_on == "device"
  loop.run(config, str(tmp_path / "straight"))

  calls = []
  original = preemption.PreemptionGuard.should_stop

  def stop_at_step_two(self, step):
    calls.append(step)
    return step == 2 or original(self, step)

  monkeypatch.setattr(preemption.PreemptionGuard, "should_stop", stop_at_step_two)
  first = loop.run(config, str(tmp_path / "resumed"))
  assert first["step"] == 2
  monkeypatch.setattr(preemption.PreemptionGuard, "should_stop", original)
  config.input.normalize_on = "host"
  resumed = loop.run(config, str(tmp_path / "resumed"))
  assert resumed["step"] == 4

  assert losses_of(str(tmp_path / "resumed")) == losses_of(str(tmp_path / "straight"))
  a, _ = model_checkpoint.load_model(str(tmp_path / "straight" / "model"))
  b, _ = model_checkpoint.load_model(str(tmp_path / "resumed" / "model"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_missing_dataset_names_the_prepare_command(tmp_path):
  config = tiny_config("goal", str(tmp_path / "nothing"), steps=1)
  config.input.dataset = "docci"
  with pytest.raises(loop.SetupError, match=r"python -m goal_jax.prepare --dataset=docci"):
    loop.run(config, str(tmp_path / "run"))


def test_missing_init_checkpoint_names_the_convert_command(data_dir, tmp_path):
  config = tiny_config("goal", data_dir, steps=1)
  config.model_init = str(tmp_path / "no_such_checkpoint")
  with pytest.raises(loop.SetupError, match=r"(?s)no_such_checkpoint.*python -m goal_jax.convert"):
    loop.run(config, str(tmp_path / "run"))


def test_non_finite_loss_stops_with_step_and_records(data_dir, tmp_path):
  config = tiny_config("global", data_dir, steps=3)
  config.optim.lr = 1e30  # params blow up after the first update
  with pytest.raises(finite.NonFiniteError, match=r"step \d.*record ids: \["):
    loop.run(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "model")


def test_demo_command_runs_end_to_end(tmp_path):
  """The README's first command, as a user runs it (fresh cache, no downloads)."""
  env = dict(os.environ, GOAL_JAX_CACHE=str(tmp_path / "cache"))
  env.pop("XLA_FLAGS", None)  # one CPU device, as on a laptop
  proc = subprocess.run(
      [sys.executable, "-m", "goal_jax.train", "--config=configs/goal.py:demo",
       f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=1500)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| Synthetic hard: R@K over split |" in proc.stdout
  results = json.load(open(tmp_path / "run" / "eval_300.json"))
  r1 = results["results"]["Synthetic test"]["metrics"]["t2i_R@1"]
  assert 100 / 300 < r1 <= 100  # far above chance (1 in 300)


def test_the_trainer_says_what_it_did(data_dir, tmp_path, capsys, monkeypatch):
  """Start, resume, model and evaluation paths are printed as lines of their own."""
  config = tiny_config("global", data_dir, steps=2)
  config.evals.benchmarks = "synthetic"
  original = preemption.PreemptionGuard.should_stop
  monkeypatch.setattr(preemption.PreemptionGuard, "should_stop",
                      lambda self, step: step == 1 or original(self, step))
  loop.run(config, str(tmp_path))
  monkeypatch.setattr(preemption.PreemptionGuard, "should_stop", original)
  first = capsys.readouterr().out
  assert (f"[train] global on synthetic/train (8 records), batch 8, 2 steps; model tiny/8 from "
          f"random; workdir {tmp_path}\n") in first
  assert "resumed" not in first and "written" not in first
  loop.run(config, str(tmp_path))
  lines = capsys.readouterr().out.splitlines()
  assert f"[train] resumed from step 1 ({tmp_path}/checkpoints/1)" in lines
  assert f"[train] model of step 2 written to {tmp_path}/model" in lines
  table = lines.index(f"[train] evaluation of step 2 written to {tmp_path}/eval_2.json")
  assert lines[table - 1] == "" and lines[table - 2].startswith("|")  # the results table
  assert "[train] " not in lines  # no empty [train] line before it
  assert os.path.isfile(tmp_path / "eval_2.json")


def test_print_config_shows_the_resolved_config_and_trains_nothing(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "goal_jax.train", "--config=configs/goal.py:init=random,batch=4",
       "--config.optim.lr=0.25", "--print_config", f"--workdir={tmp_path / 'run'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "method: goal" in proc.stdout and "  lr: 0.25" in proc.stdout
  assert "  batch_size: 4" in proc.stdout and "model_init: random" in proc.stdout
  assert not os.path.exists(tmp_path / "run")


def test_a_batch_larger_than_the_split_is_one_setup_error(data_dir, tmp_path):
  config = tiny_config("global", data_dir, steps=2)
  config.input.batch_size = 2 * BATCH
  with pytest.raises(loop.SetupError, match=r"has 8 records, fewer than one batch of "
                                            r"config.input.batch_size=16"):
    loop.run(config, str(tmp_path / "run"))


def test_a_run_shorter_than_its_warmup_names_both_fields(data_dir, tmp_path):
  config = tiny_config("global", data_dir, steps=3)
  config.optim.schedule = "cosine"
  config.optim.warmup_steps = 5
  with pytest.raises(loop.SetupError, match=r"3 optimizer steps but config.optim.warmup_steps=5"
                                            r".*--config.optim.warmup_steps=0"):
    loop.run(config, str(tmp_path / "run"))


def test_a_run_without_benchmarks_says_how_to_evaluate(data_dir, tmp_path, capsys):
  config = tiny_config("global", data_dir, steps=1)
  assert not config.evals.benchmarks
  loop.run(config, str(tmp_path / "run"))
  out = capsys.readouterr().out
  assert (f"[train] no evaluation: config.evals.benchmarks is empty; evaluate the model with "
          f"python -m goal_jax.evaluate --checkpoint={tmp_path / 'run' / 'model'} ") in out
  # At start too, before any step, with how to add one.
  start = out.index("[train] no evaluation configured (config.evals.benchmarks is empty): add "
                    "--config.evals.benchmarks=<profile or dataset:split> to evaluate during and "
                    "after training")
  assert start < out.index("[train] first step compiled and ran in ")
  assert "[train] compiling the training step (the first step waits for it)" in out


def test_data_stored_below_the_models_input_is_named_with_the_fix(data_dir, tmp_path, caplog):
  """Stored copies prepared smaller than the model's input (16 px for tiny/8's 32) train, upscaled,
  with one warning naming the option that avoids it; at the default (256) there is none."""
  small = prepare_synthetic(str(tmp_path / "small"), BATCH, image_short_side=16)
  config = tiny_config("global", small, steps=1)
  with caplog.at_level("WARNING"):
    loop.run(config, str(tmp_path / "run"))
  assert ("synthetic/train was prepared with --image_short_side=16, below the model's 32-pixel "
          "input: every image is upscaled; prepare it again with --image_short_side=32 (or 0, "
          "the original pixels)") in caplog.text
  # Evaluation says it per benchmark; the default (256) has nothing to say.
  caplog.clear()
  params, model_config = model_checkpoint.load_model(str(tmp_path / "run" / "model"))
  with caplog.at_level("WARNING"):
    runner.evaluate_benchmarks(params, model_config, "synthetic:test", small)
  assert ("Benchmark Synthetic test: synthetic/test was prepared with --image_short_side=16"
          in caplog.text)
  assert data_builder.upscaling_note("synthetic", "test", data_dir, 32) is None
