"""launch/*.sh: shellcheck-clean; dry runs print the gcloud/srun/python commands with user args."""
import os
import re
import shlex
import shutil
import subprocess

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO_ROOT, "launch")
SCRIPTS = ("common.sh", "tpu_vm.sh", "gpu_node.sh", "slurm.sh", "gpu_bench.sh")
# Training arguments with characters a careless script would mangle: ',' ':' a space and a quote.
TRAIN_ARGS = ["--config=configs/goal.py:init=gs://bkt/ckpt,batch=256", "--workdir=gs://bkt/run",
              "--config.input.data_dir=gs://bkt/tfds", "--config.evals.profile_name=it's a b"]
# As tpu_vm.sh passes them: goal_jax refuses gs:// URLs, so it mounts the bucket on every worker.
MOUNTED_ARGS = [arg.replace("gs://", "/mnt/gcs/") for arg in TRAIN_ARGS]


def _pinned_jax():
  with open(os.path.join(REPO_ROOT, "setup.cfg")) as f:
    return re.search(r"^\s*jax==([0-9.]+)$", f.read(), re.M).group(1)


def _launch(script, *args, env=None, check=True, cwd=REPO_ROOT, timeout=60):
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": "", **(env or {})}
  proc = subprocess.run(["bash", os.path.join(LAUNCH, script), *args], capture_output=True,
                        text=True, timeout=timeout, env=env, cwd=cwd)
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def _commands(stdout):
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def _contains(words, sub):
  return any(words[i:i + len(sub)] == sub for i in range(len(words) - len(sub) + 1))


def _remote(words):
  """The `--command=...` of a `gcloud ... ssh` line, split into words."""
  command = next(w for w in words if w.startswith("--command="))
  return shlex.split(command[len("--command="):])


def test_shellcheck():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (Debian: apt-get install -y shellcheck)")
  proc = subprocess.run(["shellcheck", "-x", *SCRIPTS], cwd=LAUNCH, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stdout


def test_tpu_vm_dry_run():
  proc = _launch("tpu_vm.sh", "--dry_run", "--name=goal-v4", "--zone=us-central2-b",
                 "--accelerator=v4-16", "--project=proj", "--", *TRAIN_ARGS)
  commands = _commands(proc.stdout)
  where = ["--zone=us-central2-b", "--project=proj"]
  assert commands[0] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "goal-v4", *where,
                         "--accelerator-type=v4-16", "--version=tpu-ubuntu2204-base"]
  assert ["gcloud", "compute", "tpus", "tpu-vm", "delete", "goal-v4", *where,
          "--quiet"] in commands
  copy = next(c for c in commands if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"])
  assert "--worker=all" in copy and copy[6] == "goal-v4:goal_jax.tgz"
  ssh = [c for c in commands if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  assert all(c[5] == "goal-v4" and "--worker=all" in c for c in ssh)
  install, mount, train = _remote(ssh[-3]), ssh[-2][-1], _remote(ssh[-1])
  assert f"jax[tpu]=={_pinned_jax()}" in install
  assert _contains(train, ["~/goal_jax_venv/bin/python", "-m", "goal_jax.train", *MOUNTED_ARGS])
  assert "tee" in train
  assert mount.count("gcsfuse --implicit-dirs") == 1  # one bucket, named three times
  assert "gcsfuse --implicit-dirs --rename-dir-limit=200000 bkt /mnt/gcs/bkt" in mount
  assert "sudo apt-get -qq install -y gcsfuse" in mount


def test_tpu_vm_mounts_each_bucket_once_and_leaves_local_paths_alone():
  args = ["--config=configs/goal.py:init=gs://weights.example/ckpt,data_dir=gs://data-2/tfds",
          "--workdir=gs://weights.example/run", "--config.evals.data_dir=/local/tfds"]
  proc = _launch("tpu_vm.sh", "--dry_run", "--name=v", "--zone=z", "--accelerator=v4-8", "--",
                 *args)
  ssh = [c for c in _commands(proc.stdout) if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm",
                                                        "ssh"]]
  mount, train = ssh[-2][-1], _remote(ssh[-1])
  assert re.findall(r"gcsfuse --implicit-dirs --rename-dir-limit=\d+ (\S+) (\S+);", mount) == [
      ("weights.example", "/mnt/gcs/weights.example"), ("data-2", "/mnt/gcs/data-2")]
  assert _contains(train, [
      "--config=configs/goal.py:init=/mnt/gcs/weights.example/ckpt,data_dir=/mnt/gcs/data-2/tfds",
      "--workdir=/mnt/gcs/weights.example/run", "--config.evals.data_dir=/local/tfds"])
  assert "warning" not in proc.stderr


def test_tpu_vm_queued_resource_and_git_clone():
  proc = _launch("tpu_vm.sh", "--dry_run", "--name=q1", "--zone=z", "--accelerator=v5litepod-16",
                 "--queued", "--spot", "--repo=https://github.com/me/goal_jax.git@v1.0", "--",
                 *TRAIN_ARGS)
  commands = _commands(proc.stdout)
  assert commands[0] == ["gcloud", "compute", "tpus", "queued-resources", "create", "q1",
                         "--node-id=q1", "--zone=z", "--accelerator-type=v5litepod-16",
                         "--runtime-version=tpu-ubuntu2204-base", "--spot"]
  assert ["gcloud", "compute", "tpus", "queued-resources", "delete", "q1", "--zone=z", "--force",
          "--quiet"] in commands
  assert "queued-resources describe q1" in proc.stdout  # the wait for ACTIVE
  clone = _remote(next(c for c in commands if "ssh" in c))
  assert _contains(clone, ["git", "clone", "-q", "https://github.com/me/goal_jax.git"])
  assert _contains(clone, ["checkout", "-q", "v1.0"])
  assert not any("scp" in c for c in commands)


def test_tpu_vm_reuse_neither_creates_nor_deletes():
  proc = _launch("tpu_vm.sh", "--dry_run", "--name=v", "--zone=z", "--reuse", "--", *TRAIN_ARGS)
  assert " create " not in proc.stdout and " delete " not in proc.stdout
  assert "goal_jax.train" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--zone=z", "--accelerator=v4-8", "--", *TRAIN_ARGS], "--name is required"),
    (["--name=n", "--zone=z", "--accelerator=v4-8"], "no training arguments"),
    (["--name=n", "--zone=z", "--accelerator=v4-8", "--", "--config=c.py"], "need --workdir"),
    (["--name=n", "--zone=z", "--acelerator=v4-8", "--", *TRAIN_ARGS], "unknown option --acel"),
    (["--name", "n", "--zone=z"], "unknown option --name (options are --key=value")])
def test_tpu_vm_bad_arguments(args, message):
  proc = _launch("tpu_vm.sh", "--dry_run", *args, check=False)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr
  assert "gcloud" not in proc.stdout


@pytest.mark.parametrize("script, args, message", [
    ("gpu_node.sh", ["--gpu=0", "--", "--workdir=w"], "unknown option --gpu=0"),
    ("gpu_node.sh", ["--install=yes", "--", "--workdir=w"], "unknown option --install=yes"),
    ("slurm.sh", ["--nodes=2", "--time", "--", "--workdir=w"], "unknown option --time "),
    ("slurm.sh", ["--nodes=2", "--workdir=w"], "unknown option --workdir=w"),
    ("gpu_node.sh", ["--attention=flash", "--", "--workdir=w"], "--attention must be"),
    ("slurm.sh", ["--nodes=2"], "no training arguments")])
def test_gpu_scripts_bad_arguments(script, args, message):
  """The shared option parser: value options, flags and the `--` split, in every script."""
  proc = _launch(script, "--dry_run", *args, check=False)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr
  assert proc.stdout == ""


def test_tpu_vm_deletes_the_vm_when_training_fails(tmp_path):
  """A fake gcloud logs each call and fails the training command: the VM must still go."""
  log = tmp_path / "gcloud.log"
  fake = tmp_path / "bin" / "gcloud"
  fake.parent.mkdir()
  fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n'
                  '[[ "$*" != *goal_jax.train* ]]\n')
  fake.chmod(0o755)
  proc = _launch("tpu_vm.sh", "--name=f", "--zone=z", "--accelerator=v4-8", "--", *TRAIN_ARGS,
                 env={"PATH": f"{fake.parent}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)},
                 check=False)
  calls = log.read_text().splitlines()
  assert proc.returncode != 0
  assert calls[0].startswith("compute tpus tpu-vm create f")
  assert "goal_jax.train" in calls[-2]
  assert calls[-1] == "compute tpus tpu-vm delete f --zone=z --quiet"
  assert (tmp_path / "goal_jax_f.tgz").stat().st_size > 0  # the checkout was packed


def _gpu_env_and_train(words):
  assert words[0] == "env"
  env = dict(w.split("=", 1) for w in words[1:] if "=" in w and not w.startswith("-"))
  return env, words[1 + len(env):]


def test_gpu_node_dry_run():
  proc = _launch("gpu_node.sh", "--dry_run", "--install", "--gpus=0,1",
                 "--xla_flags=--xla_dump_to=/d", "--", *TRAIN_ARGS,
                 env={"XLA_FLAGS": "--xla_gpu_autotune_level=0"})
  install, run = _commands(proc.stdout)
  assert install == ["python3", "-m", "pip", "install", "-q", "-e", REPO_ROOT,
                     f"jax[cuda12]=={_pinned_jax()}"]
  env, train = _gpu_env_and_train(run)
  assert env["PYTHONPATH"] == REPO_ROOT
  assert env["XLA_FLAGS"].split() == ["--xla_gpu_enable_latency_hiding_scheduler=true",
                                      "--xla_gpu_enable_triton_gemm=false",
                                      "--xla_gpu_autotune_level=0", "--xla_dump_to=/d"]
  assert (env["CUDA_VISIBLE_DEVICES"], env["XLA_PYTHON_CLIENT_MEM_FRACTION"]) == ("0,1", "0.9")
  assert train == ["python3", "-m", "goal_jax.train", *TRAIN_ARGS, "--config.model.attention=cudnn"]


def test_gpu_node_runs_with_the_users_override(tmp_path):
  """A real run with a fake interpreter that prints what it was given."""
  fake = tmp_path / "python"
  fake.write_text('#!/usr/bin/env bash\necho "XLA_FLAGS=$XLA_FLAGS"\nprintf "%s\\n" "$@"\n')
  fake.chmod(0o755)
  proc = _launch("gpu_node.sh", f"--python={fake}", "--", *TRAIN_ARGS,
                 "--config.model.attention=xla")
  lines = proc.stdout.splitlines()
  assert lines[0].startswith("XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true")
  assert lines[1:] == ["-m", "goal_jax.train", *TRAIN_ARGS, "--config.model.attention=xla"]


def test_gpu_node_keeps_relative_paths_where_the_user_is(tmp_path):
  """Run from another directory: the checkout's config is found, relative paths stay relative
  to the user's directory (the script no longer cds into the checkout)."""
  fake = tmp_path / "python"
  fake.write_text('#!/usr/bin/env bash\necho "cwd=$PWD"\necho "path=$PYTHONPATH"\n'
                  'printf "%s\\n" "$@"\n')
  fake.chmod(0o755)
  (tmp_path / "mine.py").write_text("")
  for config, expected in (("configs/goal.py:demo", f"{REPO_ROOT}/configs/goal.py:demo"),
                           ("mine.py:demo", "mine.py:demo")):
    proc = _launch("gpu_node.sh", f"--python={fake}", "--", f"--config={config}",
                   "--workdir=runs/a", cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert lines[:2] == [f"cwd={tmp_path}", f"path={REPO_ROOT}"]
    assert lines[2:6] == ["-m", "goal_jax.train", f"--config={expected}", "--workdir=runs/a"]


def test_slurm_dry_run_prints_a_valid_batch_script(tmp_path):
  proc = _launch("slurm.sh", "--dry_run", "--nodes=2", "--gpus_per_node=4", "--partition=gpu",
                 "--time=2:00:00", "--python=/shared/venv/bin/python", "--", *TRAIN_ARGS)
  script = proc.stdout.split("# submitted with:")[0].split("\n", 1)[1]
  for directive in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4", "--partition=gpu",
                    "--time=2:00:00"):
    assert f"#SBATCH {directive}\n" in script
  (tmp_path / "job.sh").write_text(script)
  assert subprocess.run(["bash", "-n", str(tmp_path / "job.sh")]).returncode == 0
  commands = _commands(script)
  srun = next(c for c in commands if c[0] == "srun")
  assert srun == ["srun", "--kill-on-bad-exit=1", "/shared/venv/bin/python", "-m",
                  "goal_jax.train", *TRAIN_ARGS, "--config.model.attention=cudnn"]
  exports = dict(c[1].split("=", 1) for c in commands if c[0] == "export")
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in exports["XLA_FLAGS"].split()
  assert exports["PYTHONPATH"] == REPO_ROOT and not any(c[0] == "cd" for c in commands)
  assert proc.stdout.rstrip().endswith("sbatch")


def test_slurm_submits_the_script(tmp_path):
  fake = tmp_path / "sbatch"
  fake.write_text(f"#!/usr/bin/env bash\ncat > {tmp_path}/submitted.sh\n")
  fake.chmod(0o755)
  dry = _launch("slurm.sh", "--dry_run", "--nodes=3", "--", *TRAIN_ARGS).stdout
  _launch("slurm.sh", "--nodes=3", "--", *TRAIN_ARGS,
          env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
  expected = dry.split("# submitted with:")[0].split("\n", 1)[1]
  assert (tmp_path / "submitted.sh").read_text() == expected


@pytest.mark.parametrize("args, want", [((), "xla"), (("--attention=pallas_tpu",), "pallas_tpu")])
def test_tpu_vm_attention_choice(args, want):
  """XLA's attention by default, Pallas flash attention when asked; either goes last."""
  proc = _launch("tpu_vm.sh", "--dry_run", "--name=v", "--zone=z", "--accelerator=v4-8", *args,
                 "--", *TRAIN_ARGS)
  ssh = [c for c in _commands(proc.stdout) if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm",
                                                         "ssh"]]
  assert _contains(_remote(ssh[-1]), [*MOUNTED_ARGS, f"--config.model.attention={want}"])


def test_tpu_vm_refuses_a_gpu_kernel():
  proc = _launch("tpu_vm.sh", "--dry_run", "--name=v", "--zone=z", "--accelerator=v4-8",
                 "--attention=cudnn", "--", *TRAIN_ARGS, check=False)
  assert proc.returncode == 2 and "--attention must be one of: xla pallas_tpu" in proc.stderr


def test_gpu_bench_script_keeps_rows_and_skips_them_on_a_rerun(tmp_path):
  """The lease's script on this CPU with the tiny model: a row's JSON comes back in the
  archive, and a second run of the same row skips it."""
  import json  # pylint: disable=g-import-not-at-top
  import tarfile  # pylint: disable=g-import-not-at-top
  env = {"GOAL_JAX_CACHE": str(tmp_path / "cache"), "PYTHONPATH": REPO_ROOT}
  out = tmp_path / "out"
  args = (f"--out={out}", "--variant=tiny/8", "--rows=b16_64_cached")
  _launch("gpu_bench.sh", *args, env=env, timeout=300)
  with tarfile.open(out / "results.tar.gz") as archive:
    row = json.load(archive.extractfile("rows/b16_64_cached.json"))
  assert [(r["method"], r["batch"]) for r in row["rows"]] == [("goal", 64)]
  assert row["rows"][0]["step_s"] > 0
  again = _launch("gpu_bench.sh", *args, env=env)
  assert "b16_64_cached: measured already, skipped" in again.stdout
