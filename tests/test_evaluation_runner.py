"""The evaluation runner end to end on prepared fixtures, against plain single-device references."""
import io
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from _cli import run_command
import _spm
from goal_jax import evaluate
from goal_jax import sharding
from goal_jax.data import builder, geometry, photos, prepare, raw, synthetic
from goal_jax.evaluation import (benchmark_spec, embedding, inputs, metrics, profiles, report,
                                 runner, sources, tasks, zeroshot)
from goal_jax.models import checkpoint, clip, families
from goal_jax.text import tokenizer as text_tokenizer

BATCH = 8
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("shards")
  prepare.prepare("photos", root, image_short_side=64, verbose=False)
  raw_dir = tmp_path_factory.mktemp("coco_raw")
  photos.write_raw_layout("coco_karpathy", raw_dir, short_side=64)
  prepare.prepare("coco_karpathy", root, raw_dir, splits=["test"], image_short_side=64,
                  verbose=False)
  small = raw.DatasetReader(
      synthetic.SPLITS, lambda _, split: synthetic.read_examples(None, split, num_examples=12),
      needs_manual_dir=False)
  builder.build("synthetic", small, root, splits=list(synthetic.SPLITS[1:]),
                options=builder.PrepareOptions(image_short_side=None))
  return root


@pytest.fixture(scope="module")
def model():
  config = clip.get_model_config("tiny/8", context_length=96)
  return clip.init_params(config, jax.random.key(0)), config


def _records(data_dir, dataset, split):
  source = sources.open_split(dataset, split, data_dir)
  return [source[i] for i in range(len(source))]


def _pixels(image, size, geometry_name="center_crop"):
  """Independent preprocessing: geometry, then (x / 255 - mean) / std in float64."""
  resized = np.asarray(geometry.resize_image(image, size, geometry_name), np.float64)
  return ((resized / 255.0 - MEAN) / STD).astype(np.float32)


def _decode(jpeg):
  with Image.open(io.BytesIO(jpeg)) as image:
    return image.convert("RGB")


def _plain_encoders(params, config):
  """One image / one text at a time on device 0: the unsharded reference."""
  clip_model = clip.CLIP(config)
  image_fn = jax.jit(lambda p, x: clip_model.apply({"params": p}, x,
                                                   method=clip.CLIP.encode_image)["embedding"])
  text_fn = jax.jit(lambda p, x: clip_model.apply({"params": p}, x,
                                                  method=clip.CLIP.encode_text)["embedding"])
  tok = text_tokenizer.get_tokenizer()
  encode_image = lambda image: np.asarray(
      image_fn(params, _pixels(image, config.image_size)[None]))[0]
  encode_text = lambda text: np.asarray(text_fn(params, tok(
      [text], config.context_length, normalize=False).ids))[0]
  return encode_image, encode_text


def _reference(params, config, records):
  encode_image, encode_text = _plain_encoders(params, config)
  images = np.stack([encode_image(_decode(r["image"])) for r in records])
  texts, owners = [], []
  for index, record in enumerate(records):  # long captions first, then the extras in order
    texts.append(encode_text(record["caption"]))
    owners.append(index)
  for index, record in enumerate(records):
    for caption in record["extra_captions"]:
      texts.append(encode_text(caption))
      owners.append(index)
  return images, np.stack(texts), np.array(owners)


def test_embeddings_and_recall_match_plain_loop(data_dir, model):
  params, config = model
  records = _records(data_dir, "photos", "test")
  ref_image, ref_text, _ = _reference(params, config, records)
  embedder = embedding.Embedder(config, batch_size=BATCH)
  image, text = inputs.embed_records(embedder, params, sources.open_split("photos", "test",
                                                                         data_dir))
  np.testing.assert_allclose(image, ref_image, atol=2e-5)
  np.testing.assert_allclose(text, ref_text, atol=2e-5)
  np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-5)
  results = runner.evaluate_benchmarks(params, config, "photos:test", data_dir, batch_size=BATCH)
  entry = results["photos:test"]
  assert entry["num_images"] == entry["num_texts"] == len(records) == 10
  assert entry["metrics"] == pytest.approx(metrics.retrieval_recall(ref_image, ref_text))
  assert entry["metrics"]["i2t_R@10"] == 100.0  # 10 images: every caption is in the top 10


def test_extra_captions_map_to_their_image(data_dir, model):
  params, config = model
  records = _records(data_dir, "coco_karpathy", "test")
  ref_image, ref_text, owners = _reference(params, config, records)
  assert len(owners) == 20 and np.bincount(owners).tolist() == [5, 5, 5, 5]
  # `coco_karpathy:test` names the Long-CLIP profile's "COCO 5k", whose protocol has 5,000
  # images: 4 still run, and the result and its table row say it is not that protocol.
  results = runner.evaluate_benchmarks(params, config, ["coco_karpathy:test"], data_dir,
                                       batch_size=BATCH)
  (name, coco), = results.items()
  assert coco["ad_hoc"].startswith("4 images in coco_karpathy:test; the paper's protocol uses 5000")
  assert coco["metrics"] == pytest.approx(
      metrics.retrieval_recall(ref_image, ref_text, owners, ks=profiles.LONGCLIP_KS))
  profile, _ = benchmark_spec.resolve_benchmarks(["coco_karpathy:test"])
  table = report.markdown_table(report.results_document(profile, results), profile)
  assert f"| {name} (ad hoc*) |" in table and f"*{name}: 4 images in" in table
  ks = profiles.LONGCLIP_KS
  benchmark = profiles.Benchmark("coco", "retrieval", "coco_karpathy", "test", ks,
                                 profiles.recall_columns(ks))
  entry = tasks.evaluate_retrieval(embedding.Embedder(config, batch_size=BATCH), params,
                                    sources.open_split("coco_karpathy", "test", data_dir),
                                    benchmark)
  assert (entry["num_images"], entry["num_texts"]) == (4, 20)
  expected = metrics.retrieval_recall(ref_image, ref_text, owners, ks=profiles.LONGCLIP_KS)
  assert entry["metrics"] == pytest.approx(expected)


def test_sharded_over_four_devices_equals_one_device(data_dir, model):
  params, config = model
  assert len(jax.devices()) == 4
  source = sources.open_split("synthetic", "test", data_dir)
  four = embedding.Embedder(config, sharding.make_mesh(), batch_size=BATCH)
  one = embedding.Embedder(config, sharding.make_mesh(devices=jax.devices()[:1]), batch_size=BATCH)
  for a, b in zip(inputs.embed_records(four, params, source),
                  inputs.embed_records(one, params, source)):
    np.testing.assert_allclose(a, b, atol=2e-5)
  ids = np.random.default_rng(0).integers(1, 49000, size=(11, 20)).astype(np.int32)
  ids[:, -1] = text_tokenizer.EOT_ID
  np.testing.assert_allclose(four.embed_array(params, "text", ids),
                             one.embed_array(params, "text", ids), atol=2e-5)


def test_batch_size_rounds_to_devices_and_compiles_once(data_dir, model):
  params, config = model
  embedder = embedding.Embedder(config, batch_size=5)
  assert embedder.batch_size == 8 and embedder.local_batch_size == 8
  encode = embedding._encode_fn(config, embedder.mesh)  # pylint: disable=protected-access
  runner.evaluate_benchmarks(params, config, "synthetic:test", data_dir, batch_size=5)
  compiled = encode._cache_size()  # pylint: disable=protected-access
  runner.evaluate_benchmarks(params, config, "synthetic:test", data_dir, batch_size=5)
  assert encode._cache_size() == compiled  # pylint: disable=protected-access


def test_runs_under_a_disallowing_transfer_guard(data_dir, model):
  params, config = model
  mesh = sharding.make_mesh()
  placed = jax.device_put(params, sharding.replicated(mesh))
  expected = runner.evaluate_benchmarks(params, config, "synthetic:test", data_dir,
                                        batch_size=BATCH)
  with jax.set_mesh(mesh), jax.transfer_guard("disallow"):
    got = runner.evaluate_benchmarks(placed, config, "synthetic:test", data_dir, batch_size=BATCH)
  assert got == expected


def test_synthetic_profile_writes_a_readable_results_file(data_dir, model, tmp_path):
  params, config = model
  results = runner.evaluate_benchmarks(params, config, "synthetic", data_dir, batch_size=BATCH)
  assert list(results) == ["Synthetic test", "Synthetic hard: R@K over split",
                           "Synthetic hard: within group", "Synthetic transfer",
                           "Synthetic transfer hard: within group"]
  path = tmp_path / "results.json"
  report.write_results(path, "synthetic", results, {"checkpoint": "random"})
  document = report.read_results(path)
  tasks = ["retrieval", "retrieval", "hard_groups", "retrieval", "hard_groups"]
  for name, benchmark, task in zip(results, profiles.get_profile("synthetic").benchmarks, tasks):
    entry = document["results"][name]
    assert (entry["task"], entry["dataset"], entry["split"]) == (task, "synthetic",
                                                                 benchmark.split)
    assert entry["num_images"] == 12
    if task == "retrieval":
      assert set(entry["metrics"]) == set(benchmark.columns)
    assert all(0.0 <= v <= 100.0 for v in entry["metrics"].values())
  table = report.markdown_table(document)
  assert "| Synthetic test |" in table and "| Synthetic hard: R@K over split |" in table
  # Within group: 3 groups of 4; a 2AFC key for each attribute the ids name (none in version 1).
  within = document["results"]["Synthetic hard: within group"]
  records = _records(data_dir, "synthetic", "test_hard")
  edits = [synthetic.parse_hard_id(r["id"])[1] for r in records]
  image, text = inputs.embed_records(embedding.Embedder(config, batch_size=BATCH), params,
                                     sources.open_split("synthetic", "test_hard", data_dir))
  expected = metrics.hard_group_scores(image, text, np.arange(12) // 4, edits)
  assert within["num_texts"] == 12 and within["metrics"] == pytest.approx(expected)
  attributes = {e for e in edits if e not in metrics.BASE_EDITS}
  assert set(within["metrics"]) == set(metrics.HARD_GROUP_KEYS) | {f"2afc_{a}" for a in attributes}
  columns = profiles.get_profile("synthetic").benchmark("Synthetic hard: within group").columns
  assert set(within["metrics"]) <= set(columns)
  row = next(line for line in table.splitlines() if line.startswith("| Synthetic hard: within"))
  assert row.count(f"| {report.MISSING} ") == len(columns) - len(within["metrics"])


def test_hard_groups_task_matches_metric_on_the_records(data_dir, model):
  """Records in any order: groups and edits come from each record's id, not its position."""
  params, config = model
  records = _records(data_dir, "synthetic", "test_hard")
  ids = [f"synthetic/test_hard_g{g:05d}_{m}_{e}" for g in (4, 9) for m, e in
         enumerate(["base", "colour", "binding", "colour"])]
  order = [5, 0, 7, 2, 1, 6, 3, 4]
  shuffled = [{**records[i], "id": ids[i]} for i in order]
  benchmark = profiles.get_profile("synthetic").benchmark("Synthetic hard: within group")
  entry = tasks.evaluate_hard_groups(embedding.Embedder(config, batch_size=BATCH), params,
                                      shuffled, benchmark)
  image, text = inputs.embed_records(embedding.Embedder(config, batch_size=BATCH), params,
                                     records[:8])
  expected, per_group = metrics.hard_group_scores(
      image, text, [0] * 4 + [1] * 4, ["base", "colour", "binding", "colour"] * 2, per_group=True)
  assert entry["metrics"] == pytest.approx(expected)
  assert entry["per_group"] == pytest.approx(per_group)  # groups 4 and 9: records[:4], [4:8]
  assert set(entry["metrics"]) == set(metrics.HARD_GROUP_KEYS) | {"2afc_colour", "2afc_binding"}
  assert (entry["task"], entry["num_images"], entry["num_texts"]) == ("hard_groups", 8, 8)
  version_1 = [{**r, "id": f"synthetic/test_hard_g{i // 4:05d}_{i % 4}"}
               for i, r in enumerate(records[:8])]
  entry = tasks.evaluate_hard_groups(embedding.Embedder(config, batch_size=BATCH), params,
                                      version_1, benchmark)
  assert entry["metrics"] == pytest.approx({k: expected[k] for k in metrics.HARD_GROUP_KEYS})


def _with_pairs(record, boxes, scores, full_image, sentences):
  return {**record, "pair_box": np.asarray(boxes, np.float32).reshape(-1, 4),
          "pair_score": np.asarray(scores, np.float32),
          "pair_is_full_image": np.asarray(full_image, bool),
          "pair_sentence": np.asarray(sentences, np.int32)}


def test_local_pair_prefers_the_best_pair_including_full_image(data_dir):
  record = _records(data_dir, "photos", "test")[0]  # astronaut, 512 x 512 stored at 64 x 64
  h, w = record["original_size"]
  full = _with_pairs(record, [[20, 10, 370, 512], [0, 0, w, h]], [1.0, 2.0], [False, True],
                     [0, 2])
  local = sources.local_pair_record(full)
  start, end = record["sentence_starts"][2], record["sentence_ends"][2]
  assert local["caption"] == record["caption"][start:end]
  np.testing.assert_array_equal(local["image"], np.asarray(_decode(record["image"])))
  boxed = sources.local_pair_record(_with_pairs(record, [[20, 10, 370, 512], [0, 0, w, h]],
                                               [3.0, 2.0], [False, True], [0, 2]))
  # The crop is cut from the detail copy (the original 512 px pixels, JPEG tiles).
  original = photos.load_rgb(photos.PHOTOS[0])[10:512, 20:370]
  assert boxed["image"].shape == original.shape == (502, 350, 3)
  assert np.abs(boxed["image"].astype(int) - original).mean() < 3
  # A record without a detail copy (older shards) crops its stored copy.
  older = {k: v for k, v in record.items() if not k.startswith("detail_")}
  boxed_older = sources.local_pair_record(_with_pairs(older, [[20, 10, 370, 512]], [3.0],
                                                     [False], [0]))
  scale = 64 / 512  # stored / original; crop widened to whole stored pixels
  window = (math.floor(20 * scale), math.floor(10 * scale), math.ceil(370 * scale),
            math.ceil(512 * scale))
  np.testing.assert_array_equal(boxed_older["image"],
                                np.asarray(_decode(record["image"]).crop(window)))
  assert boxed["caption"] == record["caption"][record["sentence_starts"][0]:
                                               record["sentence_ends"][0]]
  assert sources.local_pair_record(_with_pairs(record, [], [], [], [])) is None


def test_joint_benchmark_matches_reference(data_dir, model):
  params, config = model
  records = _records(data_dir, "photos", "test")
  records[3] = _with_pairs(records[3], [], [], [], [])  # a record without a local pair
  records[0] = _with_pairs(records[0], [[0, 0, 512, 512]], [5.0], [True], [1])
  benchmark = profiles.Benchmark("joint", "joint", "photos", "test", (10,),
                                 ("t2i_mAP@10", "i2t_mAP@10"), joint_mode="intended")
  embedder = embedding.Embedder(config, batch_size=BATCH)
  entry = tasks.evaluate_joint(embedder, params, records, benchmark)
  encode_image, encode_text = _plain_encoders(params, config)
  images = [encode_image(_decode(r["image"])) for r in records]
  texts = [encode_text(r["caption"]) for r in records]
  groups = list(range(len(records)))
  for index, record in enumerate(records):
    local = sources.local_pair_record(record)
    if local is not None:
      images.append(encode_image(Image.fromarray(local["image"])))
      texts.append(encode_text(local["caption"]))
      groups.append(index)
  is_global = np.arange(len(groups)) < len(records)
  expected = metrics.joint_retrieval(np.stack(images), np.stack(texts), groups, is_global,
                                     mode="intended", k=10)
  assert (entry["num_images"], entry["num_texts"]) == (10, 19)
  assert entry["metrics"] == pytest.approx(expected)


def test_custom_profile_results_and_table(data_dir, model, tmp_path):
  params, config = model
  profile, _ = benchmark_spec.resolve_benchmarks("photos:test,synthetic/Synthetic test")
  results = runner.evaluate_benchmarks(params, config, "photos:test,synthetic/Synthetic test",
                                       data_dir, batch_size=BATCH)
  document = report.write_results(tmp_path / "r.json", profile, results)
  assert report.read_results(tmp_path / "r.json")["results"].keys() == results.keys()
  table = report.markdown_table(document, profile)
  assert "| photos:test |" in table and "| Synthetic test |" in table


def test_missing_data_names_the_prepare_command(data_dir, tmp_path, model):
  params, config = model
  with pytest.raises(FileNotFoundError, match=r"'docci' split 'test' is not prepared.*`python "
                     r"-m goal_jax\.prepare --dataset=docci --manual_dir=<raw files> "
                     r"--data_dir=.* --split=test`"):
    runner.evaluate_benchmarks(params, config, "docci:test", tmp_path)
  # A missing split: only it (preparing one split keeps the others).
  with pytest.raises(FileNotFoundError, match=r"split 'train' is not prepared.*--split=train`"):
    runner.evaluate_benchmarks(params, config, "synthetic:test,synthetic:train", data_dir)


def test_evaluate_command(data_dir, model, tmp_path, capsys):
  params, config = model
  ckpt = tmp_path / "ckpt"
  checkpoint.save_model(ckpt, params, config)
  out = tmp_path / "results.json"
  assert run_command(evaluate, f"--checkpoint={ckpt}", "--benchmarks=synthetic",
                     f"--data_dir={data_dir}", f"--out={out}", f"--batch_size={BATCH}") == 0
  document = report.read_results(out)
  expected = runner.evaluate_benchmarks(params, config, "synthetic", data_dir, batch_size=BATCH)
  assert document["profile"] == "synthetic" and document["results"] == expected
  assert document["metadata"]["model"] == config.to_dict()
  assert report.markdown_table(document) in capsys.readouterr().out
  assert run_command(evaluate, f"--checkpoint={ckpt}", "--benchmarks=urban1k:test",
                     f"--data_dir={data_dir}") == 1
  assert capsys.readouterr().err.startswith(
      "error: Urban1k: dataset 'urban1k' split 'test' is not prepared")


@pytest.mark.parametrize("args, code, start", [
    (["--checkpoint=CKPT", "--benchmarks=synthetic"], 1, "error: CKPT is not a model checkpoint"),
    (["--checkpoint=CKPT", "--benchmark=synthetic"], 2,
     "error: Unknown command line flag 'benchmark'. Did you mean: benchmarks ?"),
    (["--benchmarks=synthetic"], 2, "error: --checkpoint is required"),
])
def test_evaluate_mistakes_print_one_error_line(tmp_path, args, code, start):
  """As a user runs it: a missing checkpoint or a mistyped flag, no traceback."""
  ckpt = str(tmp_path / "absent")
  result = subprocess.run(
      [sys.executable, "-m", "goal_jax.evaluate", *(a.replace("CKPT", ckpt) for a in args)],
      capture_output=True, text=True, check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  lines = result.stderr.strip().splitlines()
  assert result.returncode == code and len(lines) == 1, result.stderr
  assert lines[0].startswith(start.replace("CKPT", ckpt))


class _ColourEmbedder:
  """Image embedding = one-hot of the class whose colour an image has; prompt = its class name.

  So a correct pipeline classifies every image as the class of its colour: any mix-up of folder
  order, labels or prompt order shows up as a wrong prediction.
  """

  def __init__(self, class_names, colours, image_size):
    self.config = clip.get_model_config("tiny/8", image_size=image_size)
    self.batch_size = 4
    self._colours = np.asarray(colours, np.float64)
    tok = text_tokenizer.get_tokenizer()
    self._name_tokens = [tok.encode(n) for n in class_names]
    self.calls = []

  def place(self, params):
    return params

  def embed(self, params, kind, chunks):
    assert kind == "image"
    out = []
    for chunk in chunks:
      rgb = np.asarray(chunk).mean(axis=(1, 2)) * STD + MEAN  # undo the normalisation
      nearest = np.argmin(((rgb[:, None] * 255 - self._colours[None]) ** 2).sum(-1), axis=1)
      out.append(np.eye(len(self._colours))[nearest])
    return np.concatenate(out)

  def text_encoder(self, params):
    def encode(ids):
      self.calls.append(ids.shape)
      rows = []
      for row in np.asarray(ids):
        tokens = row.tolist()
        hits = [any(tokens[i:i + len(t)] == t for i in range(len(tokens)))
                for t in self._name_tokens]
        rows.append(np.asarray(hits, np.float64) + 1e-3)
      return np.stack(rows)
    return encode


def test_zeroshot_folder_top1(tmp_path):
  names, _ = zeroshot.zeroshot_set("cifar10")
  colours = [(25 * i, 255 - 20 * i, (97 * i) % 256) for i in range(10)]
  truth = {}
  for label, name in enumerate(names):
    folder = tmp_path / name  # folders named by class: sorted order == label order here
    folder.mkdir()
    for k in range(2):
      # The second image of class 3 is painted in class 7's colour: it must be misclassified.
      paint = 7 if (label, k) == (3, 1) else label
      Image.new("RGB", (20 + k, 16), colours[paint]).save(folder / f"{k}.png")
      truth[(label, k)] = paint
  embedder = _ColourEmbedder(names, colours, image_size=16)
  results = runner.evaluate_benchmarks(None, embedder.config, "zeroshot/cifar10", None,
                                       zeroshot_folders={"cifar10": str(tmp_path)},
                                       embedder=embedder)
  entry = results["cifar10"]
  assert entry["num_images"] == 20
  assert entry["metrics"] == {"top1": pytest.approx(100.0 * 19 / 20)}
  assert all(shape[1] == 77 for shape in embedder.calls)  # prompts at CLIP's 77 tokens


def test_evaluate_computes_in_float32_unless_told(data_dir, model, tmp_path):
  """A checkpoint saved as bfloat16 (as training saves it) is scored in float32 by default."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  params, config = model
  ckpt = tmp_path / "bf16"
  bf16_config = dataclasses.replace(config, dtype="bfloat16")
  checkpoint.save_model(ckpt, params, bf16_config)
  common = ["--benchmarks=photos:test", f"--data_dir={data_dir}", f"--batch_size={BATCH}"]
  for extra, used in (([], config), (["--dtype=bfloat16"], bf16_config)):
    out = tmp_path / "results.json"
    assert run_command(evaluate, f"--checkpoint={ckpt}", f"--out={out}", *common, *extra) == 0
    document = report.read_results(out)
    expected = runner.evaluate_benchmarks(params, used, "photos:test", data_dir, batch_size=BATCH)
    assert document["results"] == expected
    assert document["metadata"]["model"]["dtype"] == used.dtype


def test_evaluate_given_a_workdir_names_its_model_and_checkpoints(tmp_path):
  """The user passes the run's folder: one error line says which folders are models."""
  workdir = tmp_path / "run"
  (workdir / "model").mkdir(parents=True)
  (workdir / "model" / checkpoint.CONFIG_FILE).write_text("{}")
  for step in (5, 10):
    (workdir / "checkpoints" / str(step) / "state").mkdir(parents=True)
  proc = subprocess.run([sys.executable, "-m", "goal_jax.evaluate", f"--checkpoint={workdir}",
                         "--benchmarks=synthetic", f"--data_dir={tmp_path}"],
                        capture_output=True, text=True, timeout=300,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines() == [
      f"error: {workdir} is not a model checkpoint. It is a training workdir: its final model is "
      f"{workdir}/model; a checkpoint of it is {workdir}/checkpoints/10 (steps 5, 10)"]


def test_evaluate_command_on_a_siglip_checkpoint(data_dir, tmp_path):
  """`python -m goal_jax.evaluate` on a converted SigLIP: records resized and normalised as
  SigLIP (transformers' SiglipImageProcessor on the stored image), captions through the
  checkpoint's SentencePiece model; recall equals the reference computed from SiglipModel."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from _cli import run_command  # pylint: disable=g-import-not-at-top
  from goal_jax import convert  # pylint: disable=g-import-not-at-top
  from goal_jax.text import sentencepiece_tokenizer  # pylint: disable=g-import-not-at-top
  records = _records(data_dir, "photos", "test")
  spm = _spm.train([r["caption"] for r in records] * 5, 200)
  torch.manual_seed(0)
  hf = transformers.SiglipModel(transformers.SiglipConfig(
      vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, image_size=32, patch_size=8),
      text_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, vocab_size=200, max_position_embeddings=48,
                       projection_size=32))).eval()
  folder = tmp_path / "siglip"
  hf.save_pretrained(folder)
  (folder / "spiece.model").write_bytes(spm)
  ckpt = tmp_path / "ckpt"
  assert run_command(convert, f"--source={folder}", f"--out={ckpt}") == 0
  ids = sentencepiece_tokenizer.SentencePieceTokenizer(spm)(
      [r["caption"] for r in records], 48).ids
  pixels = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})(
      [_decode(r["image"]) for r in records], return_tensors="pt").pixel_values
  with torch.no_grad():
    ref_image = hf.get_image_features(pixel_values=pixels)
    ref_text = hf.get_text_features(input_ids=torch.tensor(ids, dtype=torch.long))
  unit = lambda x: (x / x.norm(dim=-1, keepdim=True)).numpy()  # noqa: E731
  ref_image, ref_text = (unit(getattr(x, "pooler_output", x)) for x in (ref_image, ref_text))

  # What evaluate embeds, row by row.
  params, config = embedding.load_model(str(ckpt))
  image, text = inputs.embed_records(
      embedding.Embedder(config, batch_size=BATCH), params,
      sources.open_split("photos", "test", data_dir),
      tokenizer=families.of(config).tokenizer(str(ckpt)))
  np.testing.assert_allclose(image, ref_image, atol=1e-5)
  np.testing.assert_allclose(text, ref_text, atol=1e-5)

  out = tmp_path / "results.json"
  assert run_command(evaluate, f"--checkpoint={ckpt}", "--benchmarks=photos:test",
                     f"--data_dir={data_dir}", f"--out={out}", "--batch_size=8") == 0
  result = json.loads(out.read_text())
  assert result["results"]["photos:test"]["metrics"] == pytest.approx(
      metrics.retrieval_recall(ref_image, ref_text))
  assert result["metadata"]["geometry"] == "squash"
  assert result["metadata"]["model"]["family"] == "siglip"
