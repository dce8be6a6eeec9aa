"""The README's first command: a method fine-tunes a tiny CLIP on the embedded data in minutes.

The papers start from OpenAI CLIP: pretrained on short captions at 77 tokens, then stretched to
248 and fine-tuned on long captions. The demo reproduces that path at toy scale, with no download:

1. prepare the embedded `synthetic` dataset into the cache (once);
2. pretrain a tiny CLIP with the global loss on *short* captions (the summary and the first shape
   sentence) at 32 tokens — our stand-in for OpenAI CLIP (once; cached by its config). With
   `backbone=siglip` a tiny SigLIP instead, with the sigmoid loss and a SentencePiece model
   trained on the training captions — the stand-in for a released SigLIP;
3. stretch its text positions 32 -> 64 (Long-CLIP's KPS) and fine-tune it with the configured
   method on the long captions; then evaluate retrieval on `test` and `test_hard`.

The cache is `$GOAL_JAX_CACHE` (default `~/.cache/goal_jax`); delete it to rebuild everything.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Callable

from absl import logging
import ml_collections

from goal_jax import config_utils
from goal_jax import files
from goal_jax.data import builder as data_builder
from goal_jax.data import prepare as data_prepare
from goal_jax.data import regions as data_regions
from goal_jax.data import synthetic
from goal_jax.models import checkpoint as model_checkpoint
from goal_jax.models import families
from goal_jax.text import sentencepiece_tokenizer
from goal_jax.training import loop
from goal_jax.training import resume
from goal_jax.training import workdir_lock

PRETRAIN_CONTEXT = 32
PRETRAIN_STEPS = 400
FINETUNE_CONTEXT = 64  # a synthetic caption has at most 62 tokens
SHORT_CAPTION_SENTENCES = 2  # the summary and the first shape: a COCO-like short caption
DEMO_VOCAB = 512  # the demo SigLIP's vocabulary bound (the synthetic captions need ~200 pieces)


cache_dir = files.cache_dir


def data_dir_of(seed: int, version: int = synthetic.LATEST_VERSION) -> str:
  """The cached embedded data of one generator seed and version (each its own dataset; the
  latest version shares its folder with the caches of earlier releases, where it is newer)."""
  if version == synthetic.LATEST_VERSION:
    return os.path.join(cache_dir(), "data", f"seed{seed}")
  return os.path.join(cache_dir(), "data", f"v{version}", f"seed{seed}")


def ensure_synthetic(data_dir: str, seed: int = 0,
                     version: int = synthetic.LATEST_VERSION) -> None:
  """Prepares every `synthetic` split of `version` once (a few seconds per split), and again
  over a cache of an older version or whose training split predates the hard negatives
  (FG-CLIP's demo reads them; the scenes and captions come out the same)."""
  try:
    newest = data_builder.dataset_dir("synthetic", data_dir).name
    if newest != f"{version}.0.0":
      raise ValueError(f"{data_dir}: synthetic {newest} prepared, {version} wanted")
    for split in synthetic.splits_of(version):
      source = data_builder.load_source("synthetic", split, data_dir)
      if split == "train" and not data_regions.survey(source, max_records=8).with_negatives:
        raise ValueError(f"{data_dir}: the training split has no hard negatives")
  except Exception:  # noqa: BLE001 - not prepared yet (or partially, or too old): prepare it
    logging.info("Preparing the embedded synthetic dataset into %s", data_dir)
    data_prepare.prepare("synthetic", data_dir, seed=seed, version=version, verbose=True)


def ensure_tokenizer(data_dir: str) -> str:
  """The demo SigLIP's SentencePiece model, trained once on the training split's captions (a
  pretrained SigLIP brings its own; a tiny one from random weights needs one of its data)."""
  path = os.path.join(data_dir, "siglip_tokenizer", sentencepiece_tokenizer.MODEL_FILES[0])
  if not os.path.isfile(path):
    source = data_builder.load_source("synthetic", "train", data_dir)
    records = (data_builder.decode_record(source[i]) for i in range(len(source)))
    texts = [text for r in records for text in (r["caption"], r["summary"])]
    files.write_atomic(path, sentencepiece_tokenizer.train_model(texts, DEMO_VOCAB))
  return path


def pretrain_config(data_dir: str, steps: int = PRETRAIN_STEPS,
                    backbone: str = "clip") -> ml_collections.ConfigDict:
  """The backbone's own loss (CLIP: InfoNCE, SigLIP: sigmoid) on short captions at 32 tokens,
  from random weights."""
  config = config_utils.load_config(config_utils.recipe_path("global_ft.py"),
                                    f"demo,backbone={backbone}")
  config.model_init = loop.RANDOM_INIT
  if backbone != "clip":
    config.model.tokenizer = ensure_tokenizer(data_dir)
  config.model.text_context = PRETRAIN_CONTEXT
  config.input.data_dir = data_dir
  config.input.caption_sentences = SHORT_CAPTION_SENTENCES
  config.total_steps = steps
  config.optim.lr = 1e-3
  config.optim.warmup_steps = min(20, steps // 4)
  config.optim.lr_floor = 1e-5
  config.evals.benchmarks = ""
  config.checkpoint_every = steps
  return config


def ensure_pretrained(data_dir: str, steps: int = PRETRAIN_STEPS,
                      backbone: str = "clip") -> str | None:
  """The pretrained tiny model of the backbone family, trained once and cached under a hash of
  its config.

  None when the pretraining was stopped by a termination signal (it resumes on the next call).
  """
  config = pretrain_config(data_dir, steps, backbone)
  # What defines the model: the fields a resume may not change, and its length (which a resume
  # may extend); not logging, input threads, where images are normalised, ...
  defining = {**resume.defining_fields(config), "total_steps": config.total_steps}
  key = hashlib.sha256(json.dumps(defining, sort_keys=True).encode())
  # The data's version too: a start must never have seen version 3's held-out pairs.
  key.update(data_builder.dataset_dir("synthetic", data_dir).name.encode())
  if config.model.tokenizer:  # its contents, not only its path, make the model
    with open(config.model.tokenizer, "rb") as f:
      key.update(f.read())
  path = os.path.join(cache_dir(), "pretrained", key.hexdigest()[:12])
  model_dir = os.path.join(path, "model")
  if os.path.isfile(os.path.join(model_dir, model_checkpoint.CONFIG_FILE)):
    return model_dir
  workdir = files.staging_directory(path, create=False)  # kept: a stopped pretraining resumes
  workdir_lock.WorkdirLock(workdir).check_free()  # another demo pretraining it: say nothing yet
  logging.info("Pretraining the demo's tiny %s on short captions into %s", backbone, path)
  print(f"[demo] pretraining a tiny {backbone} model on short captions (cached in {path})",
        flush=True)
  if loop.run(config, workdir)["preempted"]:
    return None
  files.replace_directory(workdir, path)
  return model_dir


# How often a demo polls for the cache another run is making, and how long it waits at most
# (a holder on another host sharing the cache cannot be checked for life).
WAIT_POLL_S, WAIT_MAX_S = 2.0, 3600.0


def waiting_for_other_runs(make: Callable[[], Any], what: str) -> Any:
  """`make()`, waiting while another run holds the cache folder it needs (its lock): two demos
  started together (two notebooks, two terminals) both finish, the second reading what the first
  made. After `WAIT_MAX_S` the holder's error is raised."""
  start, said = time.monotonic(), False
  while True:
    try:
      return make()
    except files.FolderBusyError:
      if time.monotonic() - start > WAIT_MAX_S:
        raise
      if not said:
        print(f"[demo] another run is making {what} in the cache ({cache_dir()}); waiting for "
              "it", flush=True)
        said = True
      time.sleep(WAIT_POLL_S)


def run_demo(config: ml_collections.ConfigDict, workdir: str,
             pretrain_steps: int | None = None) -> dict:
  """Prepares, pretrains (cached), then fine-tunes with `config`'s method and evaluates.

  The data's generator seed and version are `config.demo_data.seed` and `.version` (0: latest); `pretrain_steps` (default
  `config.demo_data.pretrain_steps`) shortens the pretraining for smoke runs; the cache keys on
  both.
  """
  demo_data = config.get("demo_data") or {}
  seed = demo_data.get("seed", 0)
  version = demo_data.get("version") or synthetic.LATEST_VERSION
  pretrain_steps = pretrain_steps or demo_data.get("pretrain_steps") or PRETRAIN_STEPS
  data_dir = data_dir_of(seed, version)
  waiting_for_other_runs(lambda: ensure_synthetic(data_dir, seed, version),
                         "the embedded dataset")
  config.input.data_dir = config.input.data_dir or data_dir
  if not config.model_init:
    backbone = families.of(families.get_variant(config.model.variant)).name
    config.model_init = waiting_for_other_runs(
        lambda: ensure_pretrained(config.input.data_dir, pretrain_steps, backbone),
        "the pretrained start")
    if config.model_init is None:
      return {"preempted": True, "step": 0}
  config.model.text_context = FINETUNE_CONTEXT
  print(f"[demo] fine-tuning with {config.method!r} in {workdir}", flush=True)
  return loop.run(config, workdir)
