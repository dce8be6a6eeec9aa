r"""Mine local image-sentence pairs (GOAL's LISM) into a `<dataset>_lism` dataset.

  python -m goal_jax.lism --data_dir=/data/shards --dataset=docci --split=train \
      --checkpoint=/ckpt/clip_l14_336
  # GOAL's joint test set: one pair per image, full-image matches kept.
  python -m goal_jax.lism --data_dir=/data/shards --dataset=dci --split=goal_test \
      --checkpoint=/ckpt/clip_l14_336 --keep_full_image
  # SAM ViT-H as GOAL (needs the torch extra and weights on disk).
  python -m goal_jax.lism ... --segmenter=sam \
      --segmenter_options=model_dir=/weights/sam-vit-huge,device=cuda

The checkpoint is any converted model (`python -m goal_jax.convert`); GOAL matches with
openai/clip-vit-large-patch14-336. Killed? Run the same command again: finished chunks are kept,
also when the data folder has moved. A second run into the same output stops at once, naming the
first; an unwritable `--data_dir` is refused before the scorer is loaded.
`--data_dir` defaults to ~/tensorflow_datasets. The output is the dataset `--out_dataset`
(default `<dataset>_lism`) in the same data_dir; train on it with
`--config.input.dataset=<out_dataset>`. Changing only `--selection/--top_k/--keep_full_image`
re-mines nothing. See `goal_jax/lism/mine.py` for the work folder and the output format.
"""
import json
import os

from absl import flags

from goal_jax import cli
from goal_jax import files
from goal_jax.lism import mine
from goal_jax.lism import scoring
from goal_jax.lism import segmenters
from goal_jax.lism import selection

_DATA_DIR = cli.define_data_dir_flag(
    help_suffix="The source is read and --out_dataset written there.")
_DATASET = flags.DEFINE_string("dataset", None, "prepared source dataset name")
_SPLIT = flags.DEFINE_string("split", "train", "split to mine")
_CHECKPOINT = cli.define_checkpoint_flag("The scorer matching regions to sentences.")
_DTYPE = flags.DEFINE_string("dtype", None, "compute dtype override (e.g. bfloat16)")
_OUT_DATASET = flags.DEFINE_string("out_dataset", None,
                                   "output dataset name in data_dir (default <dataset>_lism)")
_SEGMENTER = flags.DEFINE_string("segmenter", "felzenszwalb",
                                 "region proposer: felzenszwalb, slic, sam, oracle or registered")
_SEGMENTER_OPTIONS = flags.DEFINE_string("segmenter_options", "",
                                         "key=value,... options of the segmenter")
_MIN_AREA = flags.DEFINE_float("min_area", 0.01, "smallest segment, as a share of the image")
_MAX_AREA = flags.DEFINE_float("max_area", 0.8, "largest segment, as a share of the image")
_MAX_CANDIDATES = flags.DEFINE_integer("max_candidates", 255, "segments kept per image")
_CROP_GEOMETRY = flags.DEFINE_enum("crop_geometry", None, ["center_crop", "squash"],
                                   "crop -> scorer input (default: the scorer family's: "
                                   "center_crop for CLIP as GOAL, squash for SigLIP)")
_TEXT_CONTEXT = flags.DEFINE_integer("text_context", None,
                                     "tokens per sentence, longer ones truncated (default: GOAL's "
                                     "77, or the scorer's context if shorter: SigLIP's 64)")
_SELECTION = flags.DEFINE_enum("selection", "max", list(selection.SELECTIONS),
                               "max: GOAL's one best pair; topk; all")
_TOP_K = flags.DEFINE_integer("top_k", 3, "pairs per image for --selection=topk")
_KEEP_FULL = flags.DEFINE_bool("keep_full_image", False,
                               "keep full-image matches (GOAL's joint test set)")
_CROP_BATCH = flags.DEFINE_integer("crop_batch", 256, "crops per device step")
_TEXT_BATCH = flags.DEFINE_integer("text_batch", 256, "sentences per device step")
_CHUNK = flags.DEFINE_integer("chunk_images", 256, "images per resumable chunk")
_THREADS = flags.DEFINE_integer("threads", 0, "host threads decoding, segmenting and cropping "
                                "(0: up to 8)")
_RESTART = flags.DEFINE_bool("restart", False, "discard this split's earlier matches")
_MAX_CHUNKS = flags.DEFINE_integer("max_chunks", None, "stop after this many new chunks")
_SUMMARY_OUT = flags.DEFINE_string("summary_out", None,
                                   "also write the summary to this JSON file")


def main(argv):
  cli.check_args(argv)
  for flag, what in ((_DATASET, "the prepared dataset to mine"),
                     (_CHECKPOINT, "the scorer's model directory (python -m goal_jax.convert)")):
    if flag.value is None:
      cli.fail(f"--{flag.name} is required: {what}", code=2)
  data_dir = os.path.expanduser(_DATA_DIR.value)
  out = _OUT_DATASET.value or mine.default_output_name(_DATASET.value)
  mine.check_output(data_dir, out)  # before the scorer's load, which takes a while
  scorer = scoring.load_scorer(_CHECKPOINT.value, _DTYPE.value)
  options = mine.MineOptions(
      segmenter=_SEGMENTER.value,
      segmenter_options=segmenters.parse_options(_SEGMENTER.value, _SEGMENTER_OPTIONS.value),
      candidates=selection.CandidateOptions(_MIN_AREA.value, _MAX_AREA.value,
                                            _MAX_CANDIDATES.value),
      crop_geometry=_CROP_GEOMETRY.value or scorer.geometry,
      text_context=_TEXT_CONTEXT.value or min(mine.MineOptions.text_context,
                                              scorer.context_length),
      chunk_images=_CHUNK.value, crop_batch=_CROP_BATCH.value, text_batch=_TEXT_BATCH.value,
      num_workers=_THREADS.value)
  rule = selection.SelectionOptions(_SELECTION.value, _TOP_K.value, _KEEP_FULL.value)
  scorer_id = scoring.scorer_id(scorer.params, _DTYPE.value)
  result = mine.run(data_dir, _DATASET.value, _SPLIT.value, scorer, scorer_id, options, rule,
                    out=out, restart=_RESTART.value, max_chunks=_MAX_CHUNKS.value)
  if _SUMMARY_OUT.value:
    with open(_SUMMARY_OUT.value, "w", encoding="utf-8") as f:
      json.dump({"out": result["out"], "summaries": result["summaries"]}, f, indent=2)


if __name__ == "__main__":
  cli.run(main, expected=(ValueError, FileNotFoundError, FileExistsError, ImportError,
                          files.FolderBusyError))
