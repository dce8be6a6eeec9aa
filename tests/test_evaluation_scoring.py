"""A method's test-time scorer in evaluation: FineLIP's fused score, scored in blocks of texts,
equals its one-piece form and a numpy re-implementation; it changes rankings where CLIM does; a
trained FineLIP model keeps its method and params, and `evaluate` ranks by them unless told not to.
"""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from _cli import run_command
from goal_jax import evaluate
from goal_jax import methods
from goal_jax.bench import batches
from goal_jax.data import synthetic
from goal_jax.evaluation import embedding, metrics, profiles, report, scoring, sources
from goal_jax.losses import clim
from goal_jax.models import checkpoint, clip, token_aggregation
from goal_jax.text import tokenizer as text_tokenizer
from goal_jax.training import loop
from test_evaluation_runner import _decode, _pixels
from test_methods import BATCH, MODEL, tiny_config
from test_train import prepare_synthetic

OPTIONS = [("global_weight", 0.7), ("negative_slope", 0.2)]  # not the defaults: read from config


def finelip_scoring(loss_config, texts_per_block=None):
  found = scoring.of_method("finelip", loss_config)
  if texts_per_block is None:
    return found
  return dataclasses.replace(found, scorer=dataclasses.replace(found.scorer,
                                                               texts_per_block=texts_per_block))


def numpy_fused(image_emb, text_emb, image_tokens, text_tokens, weight, slope):
  """0.8·cos + 0.2·CLIM written out in float64: CLIM = mean_t max_v + mean_v max_t lrelu(cos)."""
  image_emb, text_emb, image_tokens, text_tokens = (
      np.asarray(x, np.float64) for x in (image_emb, text_emb, image_tokens, text_tokens))
  out = np.zeros((len(image_emb), len(text_emb)))
  for i in range(len(image_emb)):
    for j in range(len(text_emb)):
      cos = text_tokens[j] @ image_tokens[i].T  # [Lt, Lv]
      cos = np.where(cos > 0, cos, slope * cos)
      clim = cos.max(axis=1).mean() + cos.max(axis=0).mean()
      out[i, j] = weight * image_emb[i] @ text_emb[j] + (1 - weight) * clim
  return out


def tower_outputs(clip_params, model_config, images, ids):
  model = clip.CLIP(model_config)
  image_out = model.apply({"params": clip_params}, images, method=clip.CLIP.encode_image)
  text_out = model.apply({"params": clip_params}, ids, method=clip.CLIP.encode_text)
  return image_out, text_out


def one_piece_fused(params, loss_config, image_out, text_out):
  """`clim.fused_score` on `refined_tokens` of the towers' outputs, in one call; and the
  refined tokens."""
  aggregators = token_aggregation.per_modality(loss_config.aggregation_tokens,
                                               params["aggregation"])
  image_tokens, text_tokens = clim.refined_tokens(image_out, text_out, aggregators)
  interaction = clim.late_interaction(image_tokens, text_tokens,
                                      negative_slope=loss_config.negative_slope)
  fused = clim.fused_score(image_out["embedding"], text_out["embedding"], interaction,
                           global_weight=loss_config.global_weight)
  return np.asarray(fused), np.asarray(image_tokens), np.asarray(text_tokens)


def test_finelip_block_scores_equal_one_piece_and_numpy():
  config = tiny_config("finelip", OPTIONS)
  method = methods.get("finelip")
  rng = jax.random.key(0)
  params = {"clip": clip.init_params(MODEL, rng),
            **method.init_extra_params(config.loss, MODEL, jax.random.fold_in(rng, 1))}
  batch = batches.synthetic_batch(MODEL, BATCH, sentence_context=16, max_sentences=3, seed=0)
  images, ids = batch["image"][:5], batch["text"]  # 5 images, 8 texts
  image_out, text_out = tower_outputs(params["clip"], MODEL, images, ids)
  want, image_tokens, text_tokens = one_piece_fused(params, config.loss, image_out, text_out)
  reference = numpy_fused(image_out["embedding"], text_out["embedding"], image_tokens,
                          text_tokens, 0.7, 0.2)
  np.testing.assert_allclose(want, reference, atol=1e-5)
  # Features batch by batch (4 rows per step), then 3 texts per block: 3 blocks, the last padded.
  method_scoring = finelip_scoring(config.loss, texts_per_block=3)
  embedder = embedding.Embedder(MODEL, batch_size=4, features=method_scoring)
  image = embedder.embed_array(params, "image", images)
  text = embedder.embed_array(params, "text", ids)
  assert image["tokens"].shape == (5, 5, MODEL.embed_dim)  # [CLS, 4 aggregated]
  assert text["tokens"].shape == (8, 5, MODEL.embed_dim)  # [4 aggregated, EOT]
  got = method_scoring.similarity(image, text)
  assert got.shape == (5, 8) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=2e-5)
  np.testing.assert_allclose(got, reference, atol=2e-5)
  # The method's own scorer object, as `Method` carries it, scores the same in one block.
  np.testing.assert_allclose(finelip_scoring(config.loss).similarity(image, text), got, atol=1e-6)


def test_clim_changes_the_hand_made_ranking():
  """Two images and their captions whose global cosines cross, whose tokens do not.

  cos: (i0, t0) 0.8, (i1, t0) 1.0, (i0, t1) 0.6, (i1, t1) 0.96 -> by cosine t0 and i1 miss:
  R@1 50 both ways. One token each, CLIM = 2·lrelu(cos): 2 on the diagonal, 0 off it, so
  fused = 0.8·cos + 0.2·CLIM: (i0, t0) 1.04 > (i1, t0) 0.8; (i1, t1) 1.168 > (i0, t1) 0.48 and
  > (i1, t0) 0.8 -> R@1 100 both ways.
  """
  image_emb = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0]], np.float32)
  text_emb = np.array([[0.8, 0.6, 0.0], [0.6, 0.8, 0.0]], np.float32)
  e1, e2 = np.eye(3, dtype=np.float32)[1:]
  image = {"embedding": image_emb, "tokens": np.stack([e2, e1])[:, None]}
  text = {"embedding": text_emb, "tokens": np.stack([e2, e1])[:, None]}
  cosine = metrics.retrieval_recall(image_emb, text_emb, ks=(1,))
  assert cosine == {"i2t_R@1": 50.0, "t2i_R@1": 50.0}
  config = tiny_config("finelip")
  sim = finelip_scoring(config.loss, texts_per_block=1).similarity(image, text)
  np.testing.assert_allclose(sim, [[1.04, 0.48], [0.8, 1.168]], atol=1e-6)
  assert metrics.retrieval_recall_from_similarity(sim, ks=(1,)) == {"i2t_R@1": 100.0,
                                                                    "t2i_R@1": 100.0}


def test_similarity_twins_equal_the_embedding_metrics():
  """Each `*_from_similarity` metric on `image @ text.T` equals its embedding form."""
  rng = np.random.default_rng(0)
  image = rng.normal(size=(6, 4)).astype(np.float32)
  text = rng.normal(size=(9, 4)).astype(np.float32)
  owners = np.array([0, 1, 2, 3, 4, 5, 0, 2, 2])
  sim = image @ text.T
  assert metrics.retrieval_recall_from_similarity(sim, owners, ks=(1, 2), block_size=4) == \
      metrics.retrieval_recall(image, text, owners, ks=(1, 2), block_size=4)
  groups, is_global = [0, 0, 1, 1, 2, 2], [True, False, True, False, True, False]
  for mode in metrics.JOINT_MODES:
    assert metrics.joint_retrieval_from_similarity(sim[:, :6], groups, is_global, mode=mode,
                                                   k=3) == \
        metrics.joint_retrieval(image, text[:6], groups, is_global, mode=mode, k=3)
  edits = ["", "colour", "size", "", "shape", "colour"]
  assert metrics.hard_group_scores_from_similarity(sim[:, :6], [0, 0, 0, 1, 1, 1], edits) == \
      metrics.hard_group_scores(image, text[:6], [0, 0, 0, 1, 1, 1], edits)


def _numpy_recall(sim, ks):
  """R@K with one caption per image, a tie counting against the truth."""
  own, off = np.diag(sim), ~np.eye(len(sim), dtype=bool)
  i2t = ((sim >= own[:, None]) & off).sum(axis=1)
  t2i = ((sim >= own[None, :]) & off).sum(axis=0)
  return {f"{d}_R@{k}": 100.0 * np.mean(r < k) for d, r in (("i2t", i2t), ("t2i", t2i))
          for k in ks}


def _reference_scores(params, model_config, loss_config, data_dir, split):
  """(fused, cosine) `[N, N]` of a split's records, preprocessed and tokenised independently."""
  source = sources.open_split("synthetic", split, data_dir)
  records = [source[i] for i in range(len(source))]
  assert not any(r["extra_captions"] for r in records)
  images = np.stack([_pixels(_decode(r["image"]), model_config.image_size) for r in records])
  ids = text_tokenizer.get_tokenizer()([r["caption"] for r in records],
                                       model_config.context_length, normalize=False).ids
  image_out, text_out = tower_outputs(params["clip"], model_config, images, ids)
  fused, _, _ = one_piece_fused(params, loss_config, image_out, text_out)
  cosine = np.asarray(image_out["embedding"]) @ np.asarray(text_out["embedding"]).T
  return fused, cosine, records


def test_trained_finelip_model_keeps_its_method_and_evaluate_ranks_by_it(tmp_path, monkeypatch):
  data_dir = prepare_synthetic(str(tmp_path / "tfds"), BATCH)
  config = tiny_config("finelip", OPTIONS, dataset="synthetic", data_dir=data_dir)
  config.log_every, config.checkpoint_every = 1, 1000
  config.progress_bar = config.tensorboard = False
  config.evals.benchmarks = "synthetic"
  trained = {}
  original = loop.save_final_model

  def capture(workdir, state, model_config, total_steps, **kwargs):
    trained.update(jax.device_get(state["params"]))
    return original(workdir, state, model_config, total_steps, **kwargs)

  monkeypatch.setattr(loop, "save_final_model", capture)
  workdir = str(tmp_path / "run")
  loop.run(config, workdir)
  model_dir = os.path.join(workdir, "model")

  # The model directory: CLIP alone in `params` (strict, as before), the method beside it.
  clip_params, model_config = checkpoint.load_model(model_dir)
  jax.tree.map(np.testing.assert_array_equal, clip_params, trained["clip"])
  assert checkpoint.load_method(model_dir) == {"name": "finelip",
                                               "loss": json.loads(config.loss.to_json())}
  method_scoring, params = scoring.for_model(model_dir, clip_params, model_config)
  assert method_scoring == scoring.of_method("finelip", config.loss)
  assert set(params) == {"clip", "aggregation"}
  jax.tree.map(np.testing.assert_array_equal, params["aggregation"], trained["aggregation"])
  none, same = scoring.for_model(model_dir, clip_params, model_config, "embedding")
  assert none is None and same is clip_params

  # `evaluate`: the method's fused score by default, the cosine with --scoring=embedding.
  fused, cosine, records = _reference_scores(trained, model_config, config.loss, data_dir, "test")
  hard_fused, hard_cosine, hard = _reference_scores(trained, model_config, config.loss, data_dir,
                                                    "test_hard")
  parsed = [synthetic.parse_hard_id(r["id"]) for r in hard]
  groups, edits = np.array([g for g, _ in parsed]), [e for _, e in parsed]
  ks = profiles.get_profile("synthetic").benchmarks[0].ks
  documents = {}
  for flag, sim, hard_sim in ((None, fused, hard_fused), ("embedding", cosine, hard_cosine)):
    out = tmp_path / f"{flag}.json"
    args = [f"--checkpoint={model_dir}", "--benchmarks=synthetic", f"--data_dir={data_dir}",
            f"--out={out}", f"--batch_size={BATCH}"] + ([f"--scoring={flag}"] if flag else [])
    assert run_command(evaluate, *args) == 0
    document = documents[flag] = report.read_results(out)
    results = document["results"]
    for name, values in (("Synthetic test", _numpy_recall(sim, ks)),
                         ("Synthetic hard: R@K over split", _numpy_recall(hard_sim, ks))):
      assert results[name]["metrics"] == pytest.approx(values, abs=1e-9), (flag, name)
    assert results["Synthetic hard: within group"]["metrics"] == pytest.approx(
        metrics.hard_group_scores_from_similarity(hard_sim, groups, edits))
  # Each matched its own reference above; here they tell the two apart (T2I R@5 differs).
  assert [e["metrics"] for e in documents[None]["results"].values()] != \
      [e["metrics"] for e in documents["embedding"]["results"].values()]
  assert documents[None]["metadata"]["scoring"] == "method:finelip"
  assert {e.get("scoring") for e in documents[None]["results"].values()} == {"method:finelip"}
  assert documents["embedding"]["metadata"]["scoring"] == "embedding"
  assert all("scoring" not in e for e in documents["embedding"]["results"].values())
  assert "†ranked by method:finelip" in report.markdown_table(documents[None])
  # The trainer's own evaluation after training ranked the same way.
  in_training = report.read_results(os.path.join(workdir, "eval_6.json"))
  assert in_training["metadata"] == {"step": 6, "scoring": "method:finelip"}
  for name, entry in documents[None]["results"].items():
    assert in_training["results"][name]["metrics"] == pytest.approx(entry["metrics"])


def test_method_scoring_refused_without_a_scorer_or_with_params_of_another_size(tmp_path):
  config = clip.get_model_config("tiny/8", context_length=64)
  params = clip.init_params(config, jax.random.key(0))
  checkpoint.save_model(tmp_path / "plain", params, config)
  none, same = scoring.for_model(tmp_path / "plain", params, config)
  assert none is None and same is params
  with pytest.raises(ValueError, match="records no method"):
    scoring.for_model(tmp_path / "plain", params, config, "method")
  checkpoint.save_model(tmp_path / "goal", params, config,
                        method={"name": "goal", "loss": {"label_smoothing": 0.0}})
  with pytest.raises(ValueError, match="trained by goal, which has no scorer"):
    scoring.for_model(tmp_path / "goal", params, config, "method")
  # The method's params load strictly: modules of another size than its config makes fail. Host
  # arrays, as the trainer saves them (Orbax itself checks the shapes of device arrays only).
  loss = tiny_config("finelip").loss  # 4 aggregated tokens
  three = tiny_config("finelip", [("aggregation_tokens", 3)]).loss
  checkpoint.save_model(tmp_path / "finelip", params, config,
                        method={"name": "finelip", "loss": loss.to_dict()},
                        method_params=jax.device_get(methods.get("finelip").init_extra_params(
                            three, config, jax.random.key(1))))
  with pytest.raises(ValueError, match=r"\['aggregation'\]\['image'\]\['scores'\]\['bias'\] "
                     r"has shape \(3,\), the method's config makes \(4,\)"):
    scoring.for_model(tmp_path / "finelip", params, config)
