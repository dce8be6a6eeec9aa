"""LISM with a SigLIP scorer: a converted-style SigLIP folder (params, its SentencePiece model)
scores crops and sentences as the model does (its mean/std, its tokenizer, exp(t)·cos + b), and
mines a prepared split end to end."""
import jax
import numpy as np

from goal_jax.data import builder, prepare, synthetic
from goal_jax.lism import mine, scoring, selection
from goal_jax.models import checkpoint, siglip
from goal_jax.text import sentencepiece_tokenizer

SENTENCES = ["A small red striped circle sits at the top left.",
             "A large blue dotted square lies at the bottom.",
             "A scene with three shapes on a grey background.", "green yellow purple triangle"]


def _siglip_folder(tmp_path, seed=0):
  """A random tiny SigLIP saved as `convert` saves one: params, config and its tokenizer."""
  tokenizer = sentencepiece_tokenizer.SentencePieceTokenizer(
      sentencepiece_tokenizer.train_model(SENTENCES * 20, 80))
  config = siglip.get_model_config("siglip-tiny/4", vocab_size=tokenizer.vocab_size)
  params = jax.device_get(siglip.init_params(config, jax.random.key(seed)))
  params = {**params, "logit_bias": np.float32(-2.5)}
  folder = str(tmp_path / "siglip")
  checkpoint.save_model(folder, params, config, extra_files=tokenizer.checkpoint_files())
  return folder, params, config, tokenizer


def test_siglip_scorer_scores_as_the_model(tmp_path):
  folder, params, config, tokenizer = _siglip_folder(tmp_path)
  scorer = scoring.load_scorer(folder)
  assert scorer.geometry == "squash" and scorer.tokenizer.eos_id == tokenizer.eos_id
  rng = np.random.default_rng(0)
  counts = [(3, 2), (5, 1), (2, 3)]
  works = []
  for k, m in counts:
    crops = rng.integers(0, 256, (k, config.image_size, config.image_size, 3), dtype=np.uint8)
    ids = scorer.tokenizer(SENTENCES[:m], context_length=config.context_length).ids
    works.append(scoring.ImageWork(crops, ids, len(works)))
  matches = list(scoring.Matcher(scorer, crop_batch=8, text_batch=4).match(iter(works)))
  # Reference: the model on plainly normalised pixels ((x/255 - 0.5)/0.5), float64 scores.
  model = siglip.SigLIP(config)
  image_emb = np.asarray(model.apply(
      {"params": params}, np.concatenate([w.crops for w in works]) / 127.5 - 1.0,
      method=siglip.SigLIP.encode_image)["embedding"], np.float64)
  text_emb = np.asarray(model.apply({"params": params}, np.concatenate([w.ids for w in works]),
                                    method=siglip.SigLIP.encode_text)["embedding"], np.float64)
  c = s = 0
  for work, match in zip(works, matches):
    k, m = len(work.crops), len(work.ids)
    scores = np.exp(float(params["logit_scale"])) * text_emb[s:s + m] @ image_emb[c:c + k].T - 2.5
    np.testing.assert_array_equal(match.best_candidate, scores.argmax(axis=1))
    np.testing.assert_allclose(match.best_score, scores.max(axis=1), rtol=1e-4, atol=1e-4)
    c, s = c + k, s + m


def test_mining_a_split_with_a_siglip_checkpoint(tmp_path):
  folder, _, _, _ = _siglip_folder(tmp_path, seed=1)
  data_dir = str(tmp_path / "shards")
  sizes = dict(synthetic.SPLIT_SIZES)
  synthetic.SPLIT_SIZES.update(train=6)
  try:
    prepare.prepare("synthetic", data_dir, splits=("train",), verbose=False)
  finally:
    synthetic.SPLIT_SIZES.update(sizes)
  scorer = scoring.load_scorer(folder)
  options = mine.MineOptions(segmenter="oracle", chunk_images=4, crop_batch=64, text_batch=16,
                             crop_geometry=scorer.geometry,
                             text_context=min(mine.MineOptions.text_context,
                                              scorer.context_length),
                             candidates=selection.CandidateOptions(0.0, 0.8, 12))
  result = mine.mine_split(data_dir, "synthetic", "train", scorer, "siglip test", options,
                           progress=False)
  assert result.complete
  matches = mine.load_matches(result.folder)
  source = builder.load_source("synthetic", "train", data_dir)
  sentences = sum(len(builder.decode_record(source[i])["sentence_starts"]) for i in range(6))
  assert matches["num_sentences"].sum() == sentences == len(matches["best_score"])
  assert np.all(np.isfinite(matches["best_score"]))
  # The sentences are tokenised by the checkpoint's SentencePiece model, at SigLIP's context.
  record = builder.decode_record(source[0])
  texts = [record["caption"][int(a):int(b)]
           for a, b in zip(record["sentence_starts"], record["sentence_ends"])]
  work = next(mine.prepare_works(source, [0], options, scorer.image_size,
                                 text_tokenizer=scorer.tokenizer))
  np.testing.assert_array_equal(work.ids, scorer.tokenizer(texts, context_length=16).ids)
