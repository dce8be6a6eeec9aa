r"""How wide the rows of packed short captions need to be, and how many sentences GOAL's shorter
local context cuts, read from a prepared split.

    python -m goal_jax.bench.short_text --data_dir=DIR --dataset=docci --split=train
    python -m goal_jax.bench.short_text                 # the embedded synthetic test split
    python -m goal_jax.bench.short_text --widths=128,192,256,320 --max_sentences=8
    python -m goal_jax.bench.short_text --method=fgclip --dataset=finehard --data_dir=DIR \
        --records=10000 --widths=128 --rows=10,12,14

`--config.input.short_text_packing=N` with `short_text_rows=R` runs a pair's short captions as R
rows of N tokens (`goal_jax.text.packing`), dropping the captions that no longer fit: MulCLIP's
summary and first `max_sentences` sentences, FG-CLIP's summary, region captions and hard
negatives (`--method`). This reads the records (all, or the first `--records`), tokenises their
captions as the pipeline does (CLIP's tokenizer at `--sentence_context`), and prints the tokens
per pair (percentiles), then for each width and row count the share of captions kept, the share
of pairs that lose any, and the rows' tokens against the unpacked step's rows of the sentence
context. For MulCLIP it also prints the share of sentences longer than the sentence context:
those `--config.input.local_context` at that length cuts short when one is GOAL's local
sentence.
"""
import os
import tempfile

from absl import flags
import numpy as np

from goal_jax import cli
from goal_jax.data import builder
from goal_jax.data import pipeline
from goal_jax.data import prepare
from goal_jax.text import packing

FLAGS = flags.FLAGS
EXPECTED = (ValueError, FileNotFoundError)


def define_flags() -> None:
  cli.define_bench_data_flags()
  flags.DEFINE_enum("method", "mulclip", ("mulclip", "fgclip"), "whose short captions")
  flags.DEFINE_list("widths", ["128", "192", "256", "320", "384"], "row widths to report")
  flags.DEFINE_list("rows", ["1"], "rows per pair to report (config.input.short_text_rows)")
  flags.DEFINE_integer("max_sentences", 8, "sentences per caption (config.input.max_sentences)")
  flags.DEFINE_integer("max_regions", 4, "FG-CLIP: regions per image (config.input.max_regions)")
  flags.DEFINE_integer("hard_negatives", 10, "FG-CLIP: hard negatives per region")
  flags.DEFINE_integer("sentence_context", 77, "tokens per caption (CLIP's 77)")
  flags.DEFINE_integer("records", 0, "read the first N records; 0: all", lower_bound=0)


def region_caption_lengths(source, context: int, max_regions: int, hard_negatives: int
                           ) -> tuple[np.ndarray, np.ndarray]:
  """(lengths, valid) `[N, 1 + R + R·K]`: each record's summary, region captions and hard
  negatives as FG-CLIP's pipeline makes them (`pipeline.process`, at `context`)."""
  config = pipeline.default_config()
  config.update(dict(fields="global,summary,regions", sentence_context=context,
                     region_context=context, max_regions=max_regions,
                     hard_negatives=hard_negatives, geometry="squash"))
  ctx = pipeline.ProcessContext(config)
  captions = packing.captions_of(("summary", "regions"))
  rows = [packing.stack_captions(pipeline.process(builder.decode_record(source[i]), ctx),
                                 captions) for i in range(len(source))]
  return (np.stack([packing.caption_lengths(ids, valid) for ids, valid in rows]),
          np.stack([valid for _, valid in rows]))


def caption_lengths(source, max_sentences: int, context: int = 248
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(lengths, valid) `[N, 1 + M]`: each record's summary and first M sentences, in tokens with
  SOT and EOT, as the pipeline tokenises them at `context`; `valid` False past a caption's
  sentences."""
  config = pipeline.default_config()
  config.update(dict(max_sentences=max_sentences, fields="global,summary,sentences"))
  ctx = pipeline.ProcessContext(config)
  lengths = np.zeros((len(source), 1 + max_sentences), np.int32)
  valid = np.zeros(lengths.shape, bool)
  for index in range(len(source)):
    record = ctx.switches.view(builder.decode_record(source[index]))
    texts = [record["summary"], *pipeline.sentence_texts(record, max_sentences)]
    ids = ctx.tokens(texts, context)
    valid[index, :len(texts)] = True
    lengths[index, :len(texts)] = packing.caption_lengths(ids, np.ones(len(texts), bool))
  return lengths, valid


def width_table(lengths: np.ndarray, valid: np.ndarray, widths, sentence_context: int,
                rows=(1,)) -> str:
  """The report for `caption_lengths`' or `region_caption_lengths`' arrays (module docstring):
  the summary first, then the captions that can be dropped."""
  captions = valid[:, 1:]
  lines = []
  if lengths.max() > sentence_context:  # read at a longer context than the pipeline's
    longer = (lengths[:, 1:] > sentence_context) & captions
    lines.append(f"sentences longer than {sentence_context} tokens: "
                 f"{100 * longer.sum() / max(captions.sum(), 1):.2f}% (cut short there)")
  lengths = np.minimum(lengths, sentence_context)  # as the pipeline cuts them
  totals = lengths.sum(axis=1)
  unpacked = lengths.shape[1] * sentence_context
  lines += [f"{len(totals)} pairs; tokens of the short captions per pair: mean "
            f"{totals.mean():.1f}, p50 {np.percentile(totals, 50):.0f}, p90 "
            f"{np.percentile(totals, 90):.0f}, p99 {np.percentile(totals, 99):.0f}, max "
            f"{totals.max()}; captions per pair besides the summary "
            f"{captions.sum(axis=1).mean():.2f}",
            f"{'width':>6} {'rows':>5} {'captions kept':>14} {'pairs losing any':>17} "
            f"{'rows / unpacked tokens':>23}"]
  for count in rows:
    for width in widths:
      kept = packing.place(lengths, valid, width, count)[1][:, 1:]
      lost = (captions & ~kept).any(axis=1)
      lines.append(f"{width:>6} {count:>5} {100 * kept.sum() / max(captions.sum(), 1):>13.2f}% "
                   f"{100 * lost.mean():>16.2f}% {count * width / unpacked:>23.3f}")
  return "\n".join(lines)


class _First:
  """The first `count` records of a source (all with 0)."""

  def __init__(self, source, count: int):
    self._source, self._count = source, min(count or len(source), len(source))

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index: int):
    return self._source[index]


def main(argv):
  cli.check_args(argv)
  widths, rows = [int(w) for w in FLAGS.widths], [int(r) for r in FLAGS.rows]
  if min(widths) < FLAGS.sentence_context or min(rows) < 1:
    raise ValueError(f"--widths must be at least --sentence_context={FLAGS.sentence_context}, "
                     "--rows at least 1")
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = os.path.expanduser(FLAGS.data_dir) if FLAGS.data_dir else tmp
    if not FLAGS.data_dir:
      prepare.prepare(FLAGS.dataset, tmp, splits=(FLAGS.split,))
    source = _First(builder.load_source(FLAGS.dataset, FLAGS.split, data_dir), FLAGS.records)
    if FLAGS.method == "fgclip":
      lengths, valid = region_caption_lengths(source, FLAGS.sentence_context, FLAGS.max_regions,
                                              FLAGS.hard_negatives)
      what = f"{FLAGS.max_regions} regions with {FLAGS.hard_negatives} hard negatives each"
    else:
      lengths, valid = caption_lengths(source, FLAGS.max_sentences)
      what = f"at most {FLAGS.max_sentences} sentences"
  print(f"{FLAGS.dataset}/{FLAGS.split}, {FLAGS.method}: the summary and {what}, "
        f"{FLAGS.sentence_context} tokens each")
  print(width_table(lengths, valid, widths, FLAGS.sentence_context, rows))


if __name__ == "__main__":
  define_flags()
  cli.run(main, expected=EXPECTED)
