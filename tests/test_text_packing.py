"""Short captions packed in one row (`goal_jax.text.packing`) or cut short: the layout against a
hand example and a loop, the text tower's packed embeddings against each caption encoded alone,
MulCLIP's loss on packed rows against its loss on the rows of 77, GOAL's loss with its local
sentences at `local_context` against the caption's context, and the fields the pipeline adds."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goal_jax import methods
from goal_jax.bench import batches, candidates, steps
from goal_jax.data import pipeline
from goal_jax.models import clip
from goal_jax.text import packing
from goal_jax.text import tokenizer as text_tokenizer
from goal_jax.text.tokenizer import EOT_ID, SOT_ID
from goal_jax.training import loop
from test_losses_contrastive import make_mesh, shard_batch
from test_methods import BATCH, MODEL, params_and_batch, tiny_config

E, S = EOT_ID, SOT_ID


def test_a_hand_packed_row():
  ids = np.array([[[S, 5, 6, E, 0, 0], [S, 7, E, 0, 0, 0], [S, 8, 9, 10, 11, E],
                   [S, 1, E, 0, 0, 0]]], np.int32)
  out = packing.pack(ids, np.ones((1, 4), bool), 12)
  # 4 + 3 tokens fit in 12; the third caption's 6 would end at 13, and the fourth comes after it.
  assert out["short_ids"].tolist() == [[[S, 5, 6, E, S, 7, E, 0, 0, 0, 0, 0]]]
  assert out["short_positions"].tolist() == [[[0, 1, 2, 3, 0, 1, 2, 0, 0, 0, 0, 0]]]
  assert out["short_segments"].tolist() == [[[1, 1, 1, 1, 2, 2, 2, 0, 0, 0, 0, 0]]]
  assert out["short_ends"].tolist() == [[3, 6, 0, 0]]
  assert out["short_kept"].tolist() == [[True, True, False, False]]
  # An invalid caption takes no room.
  out = packing.pack(ids, np.array([[True, False, True, False]]), 12)
  assert out["short_ids"].tolist() == [[[S, 5, 6, E, S, 8, 9, 10, 11, E, 0, 0]]]
  assert out["short_ends"].tolist() == [[3, 0, 9, 0]]
  # Two rows of 8: the third caption starts the second row (4 + 3 + 6 > 8), the fourth fits
  # after it; its EOT is at 8 + 6 + 2 in the flattened rows.
  out = packing.pack(ids, np.ones((1, 4), bool), 8, rows=2)
  assert out["short_ids"].tolist() == [[[S, 5, 6, E, S, 7, E, 0], [S, 8, 9, 10, 11, E, 0, 0]]]
  assert out["short_segments"].tolist() == [[[1, 1, 1, 1, 2, 2, 2, 0], [3, 3, 3, 3, 3, 3, 0, 0]]]
  assert out["short_ends"].tolist() == [[3, 6, 13, 0]]
  assert out["short_kept"].tolist() == [[True, True, True, False]]


def _list_pack(ids, valid, width, rows):
  """The layout, built as lists of rows, one caption at a time."""
  layout = [[] for _ in range(rows)]  # each row: (token, position, segment)
  ends, kept, row, full = [], [], 0, False
  for k, (caption, ok) in enumerate(zip(ids, valid)):
    length = list(caption).index(E) + 1 if ok else 0
    if ok and not full and len(layout[row]) + length > width:
      row += 1
      full = row == rows
    if not ok or full:
      ends.append(0)
      kept.append(False)
      continue
    layout[row] += [(t, p, k + 1) for p, t in enumerate(caption[:length])]
    ends.append(row * width + len(layout[row]) - 1)
    kept.append(True)
  pad = lambda r: r + [(0, 0, 0)] * (width - len(r))
  return [pad(r) for r in layout], ends, kept


@pytest.mark.parametrize("width, rows", [(48, 1), (30, 3)])
def test_random_rows_equal_lists(width, rows):
  rng = np.random.default_rng(0)
  num, context = 6, 20
  ids = batches.random_ids(rng, (50, num), context,
                           lengths=batches.sentence_lengths(rng, (50, num), context))
  valid = rng.uniform(size=(50, num)) < 0.8
  out = packing.pack(ids, valid, width, rows)
  assert 0 < out["short_kept"].sum() < valid.sum()  # some dropped, some kept
  for b in range(50):
    layout, ends, kept = _list_pack(ids[b], valid[b], width, rows)
    got = np.stack([out[k][b] for k in ("short_ids", "short_positions", "short_segments")], -1)
    assert got.tolist() == [[list(t) for t in r] for r in layout]
    assert out["short_ends"][b].tolist() == ends and out["short_kept"][b].tolist() == kept


def _packed_against_alone(config, width=64, seed=0):
  """(packed embeddings, each caption alone, kept) of a random batch on `config`."""
  params = clip.init_params(config, jax.random.key(seed))
  rng = np.random.default_rng(seed)
  b, num, context = 3, 5, 24
  ids = batches.random_ids(rng, (b, num), context,
                           lengths=batches.sentence_lengths(rng, (b, num), context))
  valid = np.arange(num)[None] < np.array([[5], [3], [1]])
  packed = packing.pack(ids, valid, width)
  model = clip.CLIP(config)
  embedding = model.apply({"params": params}, *(packed[k] for k in packing.FIELDS[:4]),
                          method=clip.CLIP.encode_packed_text)
  alone = model.apply({"params": params}, ids.reshape(b * num, context),
                      method=clip.CLIP.encode_text)["embedding"].reshape(b, num, -1)
  return embedding, alone, packed["short_kept"]


@pytest.mark.parametrize("overrides", [{}, {"scan": True}, {"attention_pad_multiple": 8},
                                       {"remat": "dots"}])
def test_packed_embeddings_are_each_caption_alone(overrides):
  config = dataclasses.replace(clip.get_model_config("tiny/8"), **overrides)
  embedding, alone, kept = _packed_against_alone(config)
  assert kept.sum() >= 4 and not kept.all()
  np.testing.assert_allclose(embedding[kept], alone[kept], atol=1e-6)


def test_packed_gradients_are_each_caption_alone():
  config = clip.get_model_config("tiny/8")
  params = clip.init_params(config, jax.random.key(1))
  rng = np.random.default_rng(1)
  ids = batches.random_ids(rng, (2, 4), 24, lengths=batches.sentence_lengths(rng, (2, 4), 24))
  packed = packing.pack(ids, np.ones((2, 4), bool), 96)
  assert packed["short_kept"].all()
  model = clip.CLIP(config)
  weights = jax.random.normal(jax.random.key(2), (2, 4, config.embed_dim))

  def packed_loss(p):
    out = model.apply({"params": p}, *(packed[k] for k in packing.FIELDS[:4]),
                      method=clip.CLIP.encode_packed_text)
    return jnp.sum(out * weights)

  def alone_loss(p):
    out = model.apply({"params": p}, ids.reshape(8, 24), method=clip.CLIP.encode_text)
    return jnp.sum(out["embedding"].reshape(2, 4, -1) * weights)

  got, want = jax.grad(packed_loss)(params), jax.grad(alone_loss)(params)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def _packed_batch(batch, width, rows=1, captions=("summary", "sentences")):
  batch = {k: np.asarray(v) for k, v in batch.items()}
  packed = packing.pack_fields(batch, captions, width, rows)
  return {k: jnp.asarray(v) for k, v in {**batch, **packed}.items()}


def _assert_same_loss(got, want):
  """`((loss, terms), grad)` of two batches are equal to float rounding."""
  (loss, terms), grad = got
  (want_loss, want_terms), want_grad = want
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for key in want_terms:
    np.testing.assert_allclose(terms[key], want_terms[key], rtol=1e-5, err_msg=key)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(want_grad)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _sharded_loss(method, config, params, batch):
  """The loss on a 4-device mesh."""
  mesh = make_mesh()
  with jax.set_mesh(mesh):
    return jax.jit(method.make_loss_fn(MODEL, config.loss, mesh))(params,
                                                                  shard_batch(batch, mesh))[0]


def test_mulclip_on_packed_rows_is_mulclip_on_the_kept_sentences():
  """Wide enough for every caption, the loss and its gradient are the unpacked ones, dense and
  on 4 devices; narrower, they are the unpacked ones without the sentences that did not fit,
  which the step's metrics count."""
  method = methods.get("mulclip")
  config = tiny_config("mulclip")
  params, batch = params_and_batch("mulclip", config)
  loss_fn = jax.jit(jax.value_and_grad(method.make_loss_fn(MODEL, config.loss), has_aux=True))
  reference = loss_fn(params, batch)
  wide = _packed_batch(batch, 4 * 16)  # 4 captions of at most 16 tokens
  _assert_same_loss(loss_fn(params, wide), reference)
  assert int(method.step_metrics(wide)["short_text/dropped"]) == 0

  narrow = _packed_batch(batch, 24)
  kept = np.asarray(narrow["short_kept"])[:, 1:]  # the summary's is first
  dropped = np.asarray(batch["sentence_valid"]) & ~kept
  assert dropped.sum() > 0
  assert int(method.step_metrics(narrow)["short_text/dropped"]) == dropped.sum()
  got = loss_fn(params, narrow)
  _assert_same_loss(got, loss_fn(params, {**batch, "sentence_valid": jnp.asarray(kept)}))
  np.testing.assert_allclose(_sharded_loss(method, config, params, narrow), got[0][0], rtol=2e-5)


def test_a_text_tower_that_is_not_causal_is_refused():
  import test_methods_siglip as on_siglip  # pylint: disable=g-import-not-at-top
  config = on_siglip.tiny_config("mulclip")
  params, _ = on_siglip.params_and_batch("mulclip", config)
  batch = batches.synthetic_batch(on_siglip.MODEL, 2, sentence_context=16, max_sentences=3,
                                  short_text_packing=64)
  with pytest.raises(ValueError, match="needs a causal text tower"):
    methods.get("mulclip").make_loss_fn(on_siglip.MODEL, config.loss)(params, batch)


def _pipeline_config(**overrides):
  config = pipeline.default_config()
  config.update({"image_size": 32, "patch_size": 8, "sentence_context": 16, "max_sentences": 3,
                 "fields": "global,summary,sentences", **overrides})
  return config


def test_the_pipeline_adds_the_packed_fields():
  from test_data_pipeline import _hand_record  # pylint: disable=g-import-not-at-top
  _, record = _hand_record()
  plain = pipeline.process(record, _pipeline_config())
  out = pipeline.process(record, _pipeline_config(short_text_packing=40))
  want = packing.pack(np.concatenate([plain["summary"][None], plain["sentences"]]),
                      np.concatenate([[True], plain["sentence_valid"]]), 40)
  for key in packing.FIELDS:
    np.testing.assert_array_equal(out[key], want[key], err_msg=key)
  assert out["short_kept"][0] and out["short_ids"].shape == (1, 40)


def test_the_pipeline_refuses_a_width_it_cannot_use():
  with pytest.raises(ValueError, match="must hold a summary of the sentence context 16"):
    pipeline.ProcessContext(_pipeline_config(short_text_packing=12))
  with pytest.raises(ValueError, match="has not both: set it to 0"):
    pipeline.ProcessContext(_pipeline_config(short_text_packing=64, fields="global,sentences"))


@pytest.mark.parametrize("method, name", [("mulclip", "packed_short_text"),
                                          ("fgclip", "packed_region_text"),
                                          ("goal", "short_local_text")])
def test_the_candidates_keep_every_caption_of_the_gpu_rows_batch(method, name):
  """`launch/gpu_bench.sh`'s row b16_64_short_text reads a candidate's first loss against the
  step's as built, which is only right if the candidate's rows keep every caption of the bench's
  B/16 batch of 64 whole: counted here as the trainer counts drops, without compiling. Each
  candidate runs fewer FLOPs, and applies to its method only."""
  candidate = candidates.BY_NAME[name]
  config = steps.method_config(method, "B/16", 64, attention="xla", dtype="bfloat16")
  c = loop.model_config_from(config, None)
  built_flops = methods.get(method).train_flops_per_step(c, loop.input_config(config, c), 64)
  config.input.update(candidate.input_overrides)
  batch = steps.host_batch_for(config, c, 64)
  counted = {"short_local_text": "local_text/truncated"}.get(name, "short_text/dropped")
  assert int(methods.get(method).step_metrics(batch)[counted]) == 0
  flops = methods.get(method).train_flops_per_step(c, loop.input_config(config, c), 64)
  assert flops < 0.9 * built_flops
  other = steps.bench_method("global", "tiny/8", 8, steps=1, warmup=1, attention="xla",
                             dtype="float32", candidate=candidate)
  assert other.error == f"not for this method: only {method}"


def test_a_candidate_with_input_overrides_is_a_row_on_the_same_params():
  """The bench's plumbing of a candidate that changes the batch (GOAL's local sentences at a
  shorter context): its row runs the step on the same params, and its first loss is the step's
  as built (the tiny bench batch loses no token at 77)."""
  row = lambda candidate: steps.bench_method("goal", "tiny/8", 8, steps=1, warmup=1,
                                             attention="xla", dtype="float32",
                                             candidate=candidate)
  built, short = row(None), row(candidates.BY_NAME["short_local_text"])
  assert short.impl == "goal_jax+short_local_text" and short.error is None
  np.testing.assert_allclose(short.first_loss, built.first_loss, rtol=1e-6)
  assert short.train_flops < built.train_flops


def test_the_width_report_reads_the_pipelines_lengths(tmp_path):
  """`bench.short_text`: each record's short captions in tokens as the pipeline makes them
  (MulCLIP's summary and sentences, FG-CLIP's summary, region captions and hard negatives), and
  per width and row count the captions the rows keep (the packer's own rule)."""
  from goal_jax.bench import short_text  # pylint: disable=g-import-not-at-top
  from goal_jax.data import builder, prepare  # pylint: disable=g-import-not-at-top
  prepare.prepare("synthetic", str(tmp_path), splits=("train",))
  source = builder.load_source("synthetic", "train", str(tmp_path))
  lengths, valid = short_text.caption_lengths(source, 8)
  regions = short_text.region_caption_lengths(source, 77, 4, 10)
  assert lengths.max() < 77 and regions[0].max() < 77  # so rows of 77 hold them whole
  for index in (0, 7):
    record = builder.decode_record(source[index])
    for (got, got_valid), fields in (((lengths, valid), "global,summary,sentences"),
                                     (regions, "global,summary,regions")):
      config = pipeline.default_config()
      config.update({"image_size": 32, "patch_size": 8, "fields": fields, "geometry": "squash"})
      out = pipeline.process(record, config)
      ids, want_valid = packing.stack_captions(
          out, packing.captions_of(pipeline.field_groups(fields)))
      assert got[index].tolist() == packing.caption_lengths(ids, want_valid).tolist()
      assert got_valid[index].tolist() == want_valid.tolist()
  assert regions[1][:, 5:].any()  # the train split's hard negatives were read
  # By hand: two pairs of (summary, two sentences) = 10 + 20 + 30 and 10 + 5 + (none), and one
  # sentence of 90 tokens, which the rows of 77 cut to 77.
  lengths = np.array([[10, 20, 30], [10, 5, 0], [10, 90, 0]])
  valid = np.array([[True, True, True], [True, True, False], [True, True, False]])
  table = short_text.width_table(lengths, valid, [32, 64, 96], 77, rows=(1, 2))
  assert "longer than 77 tokens: 25.00%" in table
  assert "mean 54.0" in table and "max 87" in table  # 10 + 77
  rows = {tuple(line.split()[:2]): line.split()[2:] for line in table.splitlines()[3:]}
  assert rows["32", "1"] == ["50.00%", "66.67%", "0.139"]  # the 30- and 77-token ones are lost
  assert rows["64", "1"] == ["75.00%", "33.33%", "0.277"]
  assert rows["96", "1"] == ["100.00%", "0.00%", "0.416"]
  assert rows["32", "2"] == ["75.00%", "33.33%", "0.277"]  # 30 starts the second row of 32


def test_goal_with_short_local_sentences_is_goal():
  """`local_context`: the local sentences in a text forward of their own at that length give
  the loss and gradient of the caption's context when none is cut; cut ones are counted."""
  method = methods.get("goal")
  config = tiny_config("goal")
  params, batch = params_and_batch("goal", config)
  loss_fn = jax.jit(jax.value_and_grad(method.make_loss_fn(MODEL, config.loss), has_aux=True))
  reference = loss_fn(params, batch)
  lengths = np.argmax(np.asarray(batch["local_text"]), axis=-1) + 1
  local, truncated = text_tokenizer.shorten(batch["local_text"], int(lengths.max()))
  assert not truncated.any() and local.shape[1] < batch["text"].shape[1]
  short = {**batch, "local_text": jnp.asarray(local), "local_text_truncated": truncated}
  _assert_same_loss(loss_fn(params, short), reference)
  cut = int(np.sort(lengths)[BATCH // 2])  # about half the sentences lose tokens
  _, truncated = text_tokenizer.shorten(batch["local_text"], cut)
  metrics = method.step_metrics({**batch, "local_text_truncated": jnp.asarray(truncated)})
  assert 0 < int(metrics["local_text/truncated"]) == int(
      (truncated & np.asarray(batch["local_valid"])).sum())


def test_the_pipeline_cuts_the_local_sentence():
  from test_data_pipeline import _hand_record  # pylint: disable=g-import-not-at-top
  _, record = _hand_record()
  fields = {"fields": "global,local", "text_context": 32}
  full = pipeline.process(record, _pipeline_config(**fields))
  for context, lost in ((12, False), (6, True)):
    out = pipeline.process(record, _pipeline_config(local_context=context, **fields))
    want, truncated = text_tokenizer.shorten(full["local_text"], context)
    np.testing.assert_array_equal(out["local_text"], want)
    assert bool(out["local_text_truncated"]) == bool(truncated) == lost
  assert "local_text_truncated" not in full
  with pytest.raises(ValueError, match="config.local_context=40: expected 0"):
    pipeline.ProcessContext(_pipeline_config(local_context=40, **fields))


@pytest.mark.parametrize("field", ["short_text_packing", "local_context"])
def test_a_siglip_run_refuses_cut_or_packed_captions(field):
  import test_methods_siglip as on_siglip  # pylint: disable=g-import-not-at-top
  config = on_siglip.tiny_config("mulclip")
  config.input[field] = 64
  with pytest.raises(ValueError, match=f"config.input.{field}=64 .* siglip's is not: set it"):
    loop.input_config(config, on_siglip.MODEL)
  config.input[field] = 0
  loop.input_config(config, on_siglip.MODEL)


@pytest.mark.gpu
def test_packed_embeddings_on_the_cudnn_path():
  """On a GPU in bf16: the packed rows (XLA's masked attention) against each caption alone
  (cuDNN's kernel), within what bf16 and another summation order allow (as the cuDNN test in
  test_models_clip.py: two bf16 steps of the largest magnitude, 1 % in norm)."""
  config = clip.get_model_config("tiny/8", dtype="bfloat16", attention="cudnn")
  embedding, alone, kept = _packed_against_alone(config)
  got, want = np.asarray(embedding)[kept], np.asarray(alone)[kept]
  step = 2.0**-7 * np.abs(want).max()
  np.testing.assert_allclose(got, want, atol=2 * step, rtol=0)
  assert np.linalg.norm(got - want) <= 1e-2 * np.linalg.norm(want)


@pytest.mark.parametrize("method, shorter, counted", [
    ("mulclip", {"short_text_packing": 5 * 32}, "short_text/dropped"),
    ("fgclip", {"short_text_packing": 48, "short_text_rows": 12}, "short_text/dropped"),
    ("goal", {"local_context": 32}, "local_text/truncated")])
def test_training_on_shorter_rows_is_training(method, shorter, counted, tmp_path):
  """From prepared shards through the pipeline and the trainer: three steps with the captions
  packed or the local sentences cut (none loses tokens on the synthetic data) log the losses of
  three steps as built, and count nothing dropped."""
  from test_train import losses_of, prepare_synthetic, tiny_config  # pylint: disable=g-import-not-at-top
  from test_methods_fgclip import train_config  # pylint: disable=g-import-not-at-top
  from goal_jax.training import metric_log  # pylint: disable=g-import-not-at-top
  data_dir = prepare_synthetic(str(tmp_path / "tfds"), BATCH)
  runs = {}
  for name, settings in (("built", {}), ("shorter", shorter)):
    config = (train_config(data_dir, steps=3) if method == "fgclip"
              else tiny_config(method, data_dir, steps=3))
    config.input.update(settings)
    loop.run(config, str(tmp_path / name))
    runs[name] = losses_of(str(tmp_path / name))
  np.testing.assert_allclose(runs["shorter"], runs["built"], rtol=1e-5)
  rows = metric_log.read_metrics(str(tmp_path / "shorter" / "metrics.jsonl"))
  assert [row[counted] for row in rows if counted in row] == [0, 0, 0]


def test_fgclip_on_packed_rows_is_fgclip_on_the_kept_captions():
  """FG-CLIP's summary, region captions and hard negatives (1 + 3 + 12 per pair here) in rows:
  wide enough, the loss and gradient of one row of 16 per caption; narrower, the loss of those
  rows with the regions and negatives that did not fit left out, which the metrics count; and
  the same on 4 devices."""
  import test_methods_fgclip as on_fgclip  # pylint: disable=g-import-not-at-top
  config, params, batch = on_fgclip.setup("clip")
  captions = packing.captions_of(("summary", "regions"))
  loss_fn = jax.jit(jax.value_and_grad(on_fgclip.METHOD.make_loss_fn(MODEL, config.loss),
                                       has_aux=True))
  reference = loss_fn(params, batch)
  wide = _packed_batch(batch, 64, rows=4, captions=captions)
  kept = packing.unpack(np.asarray(wide["short_kept"]), batch, captions)
  assert kept["summary"].all()  # and every valid region caption and hard negative:
  np.testing.assert_array_equal(kept["region_text"], batch["region_valid"])
  np.testing.assert_array_equal(kept["region_negatives"], batch["region_negative_valid"])
  _assert_same_loss(loss_fn(params, wide), reference)
  assert int(on_fgclip.METHOD.step_metrics(wide)["short_text/dropped"]) == 0

  narrow = _packed_batch(batch, 48, rows=2, captions=captions)
  kept = packing.unpack(np.asarray(narrow["short_kept"]), batch, captions)
  region_valid = np.asarray(batch["region_valid"]) & kept["region_text"]
  negative_valid = np.asarray(batch["region_negative_valid"]) & kept["region_negatives"]
  dropped = (np.asarray(batch["region_valid"]).sum() - region_valid.sum()
             + np.asarray(batch["region_negative_valid"]).sum() - negative_valid.sum())
  assert dropped > 0 and region_valid.any()
  assert int(on_fgclip.METHOD.step_metrics(narrow)["short_text/dropped"]) == dropped
  got = loss_fn(params, narrow)
  _assert_same_loss(got, loss_fn(params, {**batch, "region_valid": jnp.asarray(region_valid),
                                          "region_negative_valid": jnp.asarray(negative_valid)}))
  np.testing.assert_allclose(_sharded_loss(on_fgclip.METHOD, config, params, narrow), got[0][0],
                             rtol=2e-5)
