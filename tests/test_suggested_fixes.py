"""Every fix a failing command suggests is a command that works for that case (issue #26).

Each test makes one mistake a user makes (a LISM output never mined, a misspelled dataset, a split
a test-only dataset lacks, a data_dir that does not exist, `init=` a Hugging Face folder or a
training workdir, a profile half prepared), reads the one-line error, and where the suggested
command is cheap runs it and checks that the first command then works.
"""
import json
import os
import subprocess
import sys

import jax
import pytest

import _torch_refs as refs  # tests/ is on sys.path under pytest.
from _cli import run_command
from goal_jax import convert as convert_cli
from goal_jax import evaluate
from goal_jax import prepare as prepare_cli
from goal_jax.data import prepare as data_prepare
from goal_jax.data import synthetic
from goal_jax.evaluation import benchmark_spec, report, runner
from goal_jax.models import checkpoint, clip
from goal_jax.training import loop
from test_train import REPO, tiny_config

SMALL = {"train": 8, "test": 8, "test_hard": 8, "test_transfer": 8, "test_transfer_hard": 8}


@pytest.fixture
def small_synthetic(monkeypatch):
  """`synthetic` at 8 records a split, for `prepare` run in this process."""
  for split, size in SMALL.items():
    monkeypatch.setitem(synthetic.SPLIT_SIZES, split, size)


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory):
  """The embedded `photos` (its only split, `test`) at a small size."""
  root = str(tmp_path_factory.mktemp("photos_tfds"))
  data_prepare.prepare("photos", root, image_short_side=32, verbose=False)
  return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("model") / "tiny"
  config = clip.get_model_config("tiny/8", context_length=96)
  checkpoint.save_model(str(root), clip.init_params(config, jax.random.key(0)), config)
  return str(root)


def _train_error(config_args, *flags):
  """Runs `python -m goal_jax.train --config=configs/global_ft.py:<config_args> <flags>` as the
  user would; returns (exit code, the stderr lines)."""
  proc = subprocess.run(
      [sys.executable, "-m", "goal_jax.train", f"--config=configs/global_ft.py:{config_args}",
       *flags], capture_output=True, text=True, cwd=REPO, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  return proc.returncode, proc.stderr.strip().splitlines()


def _prepare(*args) -> None:
  assert run_command(prepare_cli, *args) == 0


def _run_suggested(command: str, **replace) -> None:
  """Runs a suggested `python -m goal_jax.prepare|convert ...` in this process (placeholders
  replaced by `replace`)."""
  for old, new in replace.items():
    command = command.replace(old, new)
  words = command.split()
  assert words[:2] == ["python", "-m"], command
  module = {"goal_jax.prepare": prepare_cli, "goal_jax.convert": convert_cli}[words[2]]
  assert run_command(module, *words[3:]) == 0, command


def _backquoted(text: str) -> list[str]:
  return text.split("`")[1::2]


# ------------------------------------------------------------------------------------------------
# Training data.


def test_a_lism_dataset_points_at_the_lism_command(tmp_path, photos_dir):
  code, lines = _train_error(f"init=random,dataset=photos_lism,data_dir={photos_dir}",
                             "--config.input.split=test", f"--workdir={tmp_path / 'run'}")
  assert code == 1 and len(lines) == 1, lines
  assert lines[0] == (
      f"error: dataset 'photos_lism' split 'test' is not under {photos_dir}; it is LISM's output "
      f"from photos: run `python -m goal_jax.lism --dataset=photos --split=test "
      f"--data_dir={photos_dir} --checkpoint=<converted CLIP>`")
  assert "prepare --dataset=photos_lism" not in lines[0]
  # A source not prepared either: `prepare` it first, then `lism`; never `prepare ..._lism`.
  config = tiny_config("global", str(tmp_path), 1)
  config.input.dataset, config.input.split = "urban1k_lism", "test"
  with pytest.raises(loop.SetupError) as e:
    loop.check_data(config)
  assert _backquoted(str(e.value)) == [
      f"python -m goal_jax.prepare --dataset=urban1k --manual_dir=<raw files> "
      f"--data_dir={tmp_path} --split=test",
      f"python -m goal_jax.lism --dataset=urban1k --split=test --data_dir={tmp_path} "
      "--checkpoint=<converted CLIP>"]


def test_the_suggested_lism_command_parses(tmp_path, photos_dir):
  """The suggestion's flags are `lism`'s: run as typed, it gets as far as reading the scorer."""
  config = tiny_config("global", photos_dir, 1)
  config.input.dataset, config.input.split = "photos_lism", "test"
  with pytest.raises(loop.SetupError) as e:
    loop.check_data(config)
  [command] = _backquoted(str(e.value))
  scorer = tmp_path / "no_scorer"
  argv = command.replace("<converted CLIP>", str(scorer)).split()
  assert argv[:3] == ["python", "-m", "goal_jax.lism"]
  proc = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, cwd=REPO,
                        timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr
  assert lines[0].startswith(f"error: {scorer} is not a model checkpoint"), lines


def test_a_misspelled_dataset_gets_did_you_mean_and_no_command(tmp_path, photos_dir):
  code, lines = _train_error(f"init=random,dataset=photoz,data_dir={photos_dir}",
                             f"--workdir={tmp_path / 'run'}")
  assert (code, lines) == (1, ["error: unknown dataset 'photoz': did you mean 'photos'?"])
  config = tiny_config("global", photos_dir, 1)
  for typo, meant in (("docii", "docci"), ("urban1k_lsim", "urban1k_lism"), ("Urban1k", "urban1k")):
    config.input.dataset = typo
    with pytest.raises(loop.SetupError, match=rf"^unknown dataset '{typo}': did you mean "
                                              rf"'{meant}'\?$"):
      loop.check_data(config)


def test_a_test_only_dataset_says_so_and_its_split_works(tmp_path, photos_dir):
  code, lines = _train_error(f"init=random,dataset=photos,data_dir={photos_dir}",
                             f"--workdir={tmp_path / 'run'}")
  assert (code, lines) == (1, ["error: dataset 'photos' has only a 'test' split, not 'train': "
                               "use --config.input.split=test"])
  config = tiny_config("global", photos_dir, 1)
  config.input.dataset, config.input.split = "photos", "test"
  assert len(loop.check_data(config)) == 10  # the split the message names opens
  # Not prepared either: the split to use, and the command that prepares only it.
  config.input.dataset, config.input.split = "urban1k", "train"
  with pytest.raises(loop.SetupError, match=(
      r"^dataset 'urban1k' has only a 'test' split, not 'train': use --config.input.split=test "
      rf"\(not prepared yet: run `python -m goal_jax.prepare --dataset=urban1k "
      rf"--manual_dir=<raw files> --data_dir={photos_dir} --split=test`\)$")):
    loop.check_data(config)
  # A dataset with several splits: which, and the closest.
  config.input.dataset, config.input.split = "docci", "tarin"
  with pytest.raises(loop.SetupError, match=(
      r"^dataset 'docci' has no split 'tarin': did you mean --config.input.split=train\? its "
      r"splits are train, test, test_qual, qual_dev, qual_test$")):
    loop.check_data(config)


def test_a_missing_data_dir_says_so_and_the_suggested_prepare_fills_it(tmp_path):
  missing = tmp_path / "no_such_dir"
  code, lines = _train_error(f"init=random,dataset=photos,data_dir={missing}",
                             "--config.input.split=test", f"--workdir={tmp_path / 'run'}")
  assert code == 1 and len(lines) == 1, lines
  assert lines[0].startswith(f"error: data_dir {missing} does not exist: pass the folder that "
                             "holds the prepared datasets (--config.input.data_dir=...), or make "
                             "photos test in it: ")
  [command] = _backquoted(lines[0])
  assert command == f"python -m goal_jax.prepare --dataset=photos --data_dir={missing} --split=test"
  _run_suggested(command + " --image_short_side=32")
  config = tiny_config("global", str(missing), 1)
  config.input.dataset, config.input.split = "photos", "test"
  assert len(loop.check_data(config)) == 10


def test_a_missing_split_prepares_only_it(tmp_path, small_synthetic):
  _prepare("--dataset=synthetic", f"--data_dir={tmp_path}", "--split=test")
  config = tiny_config("global", str(tmp_path), 1)
  with pytest.raises(loop.SetupError) as e:
    loop.check_data(config)
  assert str(e.value) == (f"dataset 'synthetic' split 'train' is not prepared under {tmp_path}; "
                          f"run `python -m goal_jax.prepare --dataset=synthetic "
                          f"--data_dir={tmp_path} --split=train`")
  _run_suggested(_backquoted(str(e.value))[0])
  assert len(loop.check_data(config)) == SMALL["train"]


def test_the_default_data_dir_is_the_one_prepare_writes(tmp_path, monkeypatch, small_synthetic):
  """`~/tensorflow_datasets` (every command's default) is the home folder's, for the trainer too."""
  monkeypatch.setenv("HOME", str(tmp_path))
  _prepare("--dataset=synthetic", "--data_dir=~/tensorflow_datasets", "--split=train")
  config = tiny_config("global", "~/tensorflow_datasets", 1)
  config.model_init = "does_not_exist"  # stops the run right after the data checks
  with pytest.raises(loop.SetupError, match="does_not_exist is not a model checkpoint"):
    loop.run(config, str(tmp_path / "run"))
  assert config.input.data_dir == str(tmp_path / "tensorflow_datasets")


# ------------------------------------------------------------------------------------------------
# init=


def test_init_a_hugging_face_folder_names_convert_into_a_new_folder(tmp_path, photos_dir):
  hf = tmp_path / "clip-tiny"
  refs.hf_clip(vision_heads=4, text_heads=2).save_pretrained(hf)
  config = tiny_config("global", photos_dir, 1)
  config.model_init = str(hf)
  with pytest.raises(loop.SetupError) as e:
    loop.load_init_params(config)
  out = f"{hf}_goal_jax"
  assert str(e.value) == (
      f"init={hf} is not a model checkpoint but a Hugging Face model folder; convert it into a "
      f"new folder with `python -m goal_jax.convert --source={hf} --out={out}` and pass "
      f"init={out}")
  _run_suggested(_backquoted(str(e.value))[0])
  assert not os.path.exists(hf / checkpoint.CONFIG_FILE)  # the source untouched
  config.model_init = out
  params, init_config = loop.load_init_params(config)
  assert init_config.context_length == 77 and params
  # Converted already: the message names the conversion.
  config.model_init = str(hf)
  with pytest.raises(loop.SetupError, match=rf"its conversion is {out}: pass init={out}$"):
    loop.load_init_params(config)


def _fake_workdir(root, steps=(2, 4)):
  """A training workdir as the trainer lays it out: config.json, model_config.json and
  checkpoints/<step>/state (no finished model/)."""
  os.makedirs(root)
  config = clip.get_model_config("tiny/8", context_length=96)
  checkpoint.save_config(str(root), config)
  (root / "config.json").write_text("{}")
  for step in steps:
    (root / "checkpoints" / str(step) / "state").mkdir(parents=True)
  return config


def test_init_a_workdir_or_step_names_its_model_or_how_to_finish(tmp_path, photos_dir):
  workdir = tmp_path / "run"
  model_config = _fake_workdir(workdir)
  step = workdir / "checkpoints" / "4"
  config = tiny_config("global", photos_dir, 1)
  unfinished = (f"its run has not finished (last checkpoint: step 4), so there is no "
                f"{workdir}/model yet: rerun the `python -m goal_jax.train` command that started "
                f"it (its config is {workdir}/config.json) with --workdir={workdir} to finish "
                f"it, then pass init={workdir}/model")
  config.model_init = str(workdir)
  with pytest.raises(loop.SetupError) as e:
    loop.load_init_params(config)
  assert str(e.value) == (f"init={workdir} is not a model checkpoint but a training workdir; "
                          f"{unfinished}")
  config.model_init = str(step)
  with pytest.raises(loop.SetupError) as e:
    loop.load_init_params(config)
  assert str(e.value) == (f"init={step} is not a model checkpoint but a checkpoint step of the "
                          f"training run in {workdir}, which holds its optimizer state; "
                          f"{unfinished}")
  # As the user sees it: one line, exit 1, no traceback.
  code, lines = _train_error(f"init={step},dataset=photos,data_dir={photos_dir}",
                             "--config.input.split=test", f"--workdir={tmp_path / 'new'}")
  assert (code, lines) == (1, [f"error: {e.value}"])
  # Finished: the message names model/, which loads.
  checkpoint.save_model(str(workdir / "model"),
                        clip.init_params(model_config, jax.random.key(0)), model_config)
  for given in (workdir, step):
    config.model_init = str(given)
    with pytest.raises(loop.SetupError, match=rf"its trained model is {workdir}/model: pass "
                                              rf"init={workdir}/model$"):
      loop.load_init_params(config)
  config.model_init = str(workdir / "model")
  _, loaded = loop.load_init_params(config)
  assert loaded == model_config


# ------------------------------------------------------------------------------------------------
# evaluate --benchmarks=<profile>: what is prepared runs, the rest is listed.


def test_evaluate_runs_what_is_prepared_and_lists_the_rest(tmp_path, model_dir, capsys,
                                                           small_synthetic):
  data_dir = tmp_path / "tfds"
  _prepare("--dataset=synthetic", f"--data_dir={data_dir}", "--split=test")
  prepare_hard = (f"python -m goal_jax.prepare --dataset=synthetic --data_dir={data_dir} "
                  "--split=test_hard")
  out = tmp_path / "results.json"
  capsys.readouterr()
  assert run_command(evaluate, f"--checkpoint={model_dir}", "--benchmarks=Synthetic_V2",
                     f"--data_dir={data_dir}", f"--out={out}", "--batch_size=8") == 0
  stdout = capsys.readouterr().out
  document = report.read_results(out)
  assert document["profile"] == "synthetic_v2" and list(document["results"]) == ["Synthetic test"]
  hard = ["Synthetic hard: R@K over split", "Synthetic hard: within group"]
  assert document["not_run"] == {name: {"reason": "not prepared", "fix": f"run `{prepare_hard}`",
                                        "commands": [prepare_hard]} for name in hard}
  assert stdout.rstrip().splitlines()[-2:] == [
      f"{name}: not run: not prepared; run `{prepare_hard}`" for name in hard]
  assert "| Synthetic test |" in stdout
  # --require_all: an error, one line per missing benchmark, nothing run.
  assert run_command(evaluate, f"--checkpoint={model_dir}", "--benchmarks=synthetic_v2",
                     f"--data_dir={data_dir}", "--require_all") == 1
  assert capsys.readouterr().err.strip().splitlines() == [
      f"error: {name}: dataset 'synthetic' split 'test_hard' is not prepared under {data_dir}; "
      f"run `{prepare_hard}`" for name in hard]
  # The suggested command, then everything runs.
  _run_suggested(prepare_hard)
  assert run_command(evaluate, f"--checkpoint={model_dir}", "--benchmarks=synthetic_v2",
                     f"--data_dir={data_dir}", f"--out={out}", "--batch_size=8",
                     "--require_all") == 0
  document = report.read_results(out)
  assert list(document["results"]) == ["Synthetic test", *hard] and "not_run" not in document


def test_evaluate_names_match_in_any_case_and_mistakes_list_the_valid_ones(tmp_path, model_dir,
                                                                            capsys):
  def error(*benchmarks):
    capsys.readouterr()
    assert run_command(evaluate, f"--checkpoint={model_dir}", f"--data_dir={tmp_path}",
                       *(f"--benchmarks={b}" for b in benchmarks)) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]

  prepare_urban1k = (f"python -m goal_jax.prepare --dataset=urban1k --manual_dir=<raw files> "
                     f"--data_dir={tmp_path} --split=test")
  for spelling in ("goal/Urban1k", "GOAL/urban1k", "goal/URBAN1K"):
    assert error(spelling) == (f"error: Urban1k: dataset 'urban1k' split 'test' is not prepared "
                               f"under {tmp_path}; run `{prepare_urban1k}`")
  for spelling in ("Urban1k", "urban1k", "URBAN1K"):
    assert error(spelling) == (
        f"error: benchmark '{spelling}' is in 2 profiles, whose protocols differ: name one, "
        "`goal/Urban1k` (urban1k:test, R@1/5/25/50, T2I first) or `longclip/Urban1k` "
        "(urban1k:test, R@1/5/10, I2T first)")
  unknown = error("nonsense")
  assert unknown.startswith("error: unknown benchmark 'nonsense': profiles: goal, longclip, "
                            "synthetic, synthetic_v2, zeroshot; benchmarks: goal/DOCCI, DCI, ")
  assert "longclip/Urban1k" in unknown and unknown.endswith(
      "; or `dataset:split` of a prepared split")
  assert error("synthetik").startswith("error: unknown benchmark 'synthetik': did you mean "
                                       "'synthetic'? profiles: ")
  assert error("goal/dcii").startswith("error: profile 'goal' has no benchmark 'dcii': did you "
                                       "mean 'DCI'? it has DOCCI, DCI, Urban1k")
  # `dataset:split` keeps working, and a misspelled dataset in it gets no command.
  assert error("urbn1k:test") == "error: unknown dataset 'urbn1k': did you mean 'urban1k'?"
  assert error("urban1k:train") == (f"error: dataset 'urban1k' has only a 'test' split, not "
                                    f"'train': use urban1k:test (not prepared yet: run "
                                    f"`{prepare_urban1k}`)")


def test_benchmark_names_resolve_in_any_case():
  for spec in ("DCI", "dci", "goal/dci", "GOAL/DCI"):
    assert benchmark_spec.resolve_benchmarks(spec)[1] == (
        benchmark_spec.resolve_benchmarks("goal/DCI")[1])
  profile, chosen = benchmark_spec.resolve_benchmarks("LongCLIP")
  assert profile.name == "longclip" and len(chosen) == 4
  profile, chosen = benchmark_spec.resolve_benchmarks("synthetic test,SYNTHETIC:test_hard")
  assert [b.name for b in chosen][:1] == ["Synthetic test"]


# ------------------------------------------------------------------------------------------------
# The trainer's own evaluation: a benchmark without data stops the run before it starts.


def test_training_with_an_unprepared_benchmark_stops_at_start_up(tmp_path, small_synthetic):
  data_dir = str(tmp_path / "tfds")
  _prepare("--dataset=synthetic", f"--data_dir={data_dir}", "--split=train,test")
  config = tiny_config("global", data_dir, 1)
  config.evals.benchmarks = "synthetic_v2"
  command = (f"python -m goal_jax.prepare --dataset=synthetic --data_dir={data_dir} "
             "--split=test_hard")
  with pytest.raises(loop.SetupError) as e:
    loop.run(config, str(tmp_path / "run"))
  assert str(e.value).splitlines() == [
      f"config.evals.benchmarks: Synthetic hard: R@K over split: dataset 'synthetic' split "
      f"'test_hard' is not prepared under {data_dir}; run `{command}`",
      f"error: config.evals.benchmarks: Synthetic hard: within group: dataset 'synthetic' split "
      f"'test_hard' is not prepared under {data_dir}; run `{command}`"]
  assert not os.path.exists(tmp_path / "run" / "checkpoints")  # nothing trained
  _run_suggested(command)
  loop.check_benchmarks(config)  # now it starts
  config.evals.benchmarks = "zeroshot/cifar10"
  with pytest.raises(loop.SetupError, match=r"cifar10 needs an image folder, which training does "
                                            r"not take: leave it out and run `python -m "
                                            r"goal_jax.evaluate .*--zeroshot_classes=cifar10` "):
    loop.check_benchmarks(config)


def test_missing_data_leaves_out_only_what_preparing_makes(tmp_path, photos_dir):
  """`runner.missing_data`: a split that is not prepared is left out with its command; a name
  no preparation makes raises."""
  missing = runner.missing_data("photos:test,urban1k:test,zeroshot/cifar10", photos_dir)
  assert list(missing) == ["Urban1k", "cifar10"]
  assert missing["Urban1k"].reason == "not prepared"
  assert missing["cifar10"].as_dict() == {
      "reason": "no image folder", "commands": [],
      "fix": "pass --zeroshot_folder=<ImageFolder of its test images> --zeroshot_classes=cifar10"}
  with pytest.raises(ValueError, match="did you mean 'photos'"):
    runner.missing_data("photoz:test", photos_dir)
  with pytest.raises(FileNotFoundError, match=f"data_dir {tmp_path / 'x'} does not exist"):
    runner.missing_data("photos:test", tmp_path / "x")
  assert json.loads(json.dumps(missing["Urban1k"].as_dict()))["commands"] == [
      f"python -m goal_jax.prepare --dataset=urban1k --manual_dir=<raw files> "
      f"--data_dir={photos_dir} --split=test"]


@pytest.mark.parametrize("args, says", [
    (["goal_jax.datasets", "--data_dir=gs://bkt/tfds"],
     "error: --data_dir=gs://bkt/tfds: goal_jax reads and writes through the local file system, "
     "not gs:// URLs; mount the bucket (gcsfuse --implicit-dirs bkt /mnt/gcs/bkt; "
     "launch/tpu_vm.sh mounts the gs:// paths of its arguments on every worker) and pass "
     "/mnt/gcs/bkt/tfds"),
    (["goal_jax.train", "--config=configs/goal.py:init=gs://bkt/ckpt", "--workdir=/tmp/unused"],
     "error: --config.model_init=gs://bkt/ckpt: goal_jax reads and writes through the local "
     "file system, not gs:// URLs; mount the bucket (gcsfuse --implicit-dirs bkt /mnt/gcs/bkt; "
     "launch/tpu_vm.sh mounts the gs:// paths of its arguments on every worker) and pass "
     "/mnt/gcs/bkt/ckpt"),
    (["goal_jax.evaluate", "--checkpoint=/ckpt", "--out=s3://b/eval.json"],
     "error: --out=s3://b/eval.json: goal_jax reads and writes through the local file system, "
     "not s3:// URLs; copy or mount it locally and pass that path"),
])
def test_a_bucket_url_is_refused_with_the_mount_that_serves_it(tmp_path, args, says):
  """A gs:// path in a flag or a config field: one line, before any work, with the gcsfuse
  mount and the path to pass (what launch/tpu_vm.sh does on every worker)."""
  proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert (proc.returncode, proc.stderr.strip().splitlines()) == (2, [says])
