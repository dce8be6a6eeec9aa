r"""How wide a row MulCLIP's packed summary and sentences need, and how many sentences GOAL's
shorter local context cuts, read from a prepared split.

    python -m goal_jax.bench.short_text --data_dir=DIR --dataset=docci --split=train
    python -m goal_jax.bench.short_text                 # the embedded synthetic test split
    python -m goal_jax.bench.short_text --widths=128,192,256,320 --max_sentences=8

`--config.input.short_text_packing=N` runs a pair's summary and first `max_sentences` sentences
as one row of N tokens (`goal_jax.text.packing`), dropping the sentences that no longer fit.
This reads every record's summary and sentences, tokenises them as the pipeline does (CLIP's
tokenizer, each cut at `--sentence_context`), and prints the tokens per pair (percentiles), then
for each width the share of sentences kept, the share of pairs that lose any, and the row's
tokens against the (1 + M) rows of the sentence context that the unpacked step runs. It also
prints the share of sentences longer than the sentence context: those
`--config.input.local_context` at that length cuts short when one is GOAL's local sentence.
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
  flags.DEFINE_list("widths", ["128", "192", "256", "320", "384"], "row widths to report")
  flags.DEFINE_integer("max_sentences", 8, "sentences per caption (config.input.max_sentences)")
  flags.DEFINE_integer("sentence_context", 77, "tokens per sentence (CLIP's 77)")
  flags.DEFINE_integer("rows", 1, "rows per pair (config.input.short_text_rows)", lower_bound=1)


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
                rows: int = 1) -> str:
  """The report for `caption_lengths`' arrays (module docstring)."""
  sentences = valid[:, 1:]
  longer = (lengths[:, 1:] > sentence_context) & sentences
  lengths = np.minimum(lengths, sentence_context)  # as the pipeline cuts them
  totals = lengths.sum(axis=1)
  unpacked = lengths.shape[1] * sentence_context / rows
  lines = [f"sentences longer than {sentence_context} tokens: "
           f"{100 * longer.sum() / max(sentences.sum(), 1):.2f}% (cut short there)",
           f"{len(totals)} pairs; tokens of summary + sentences per pair: mean "
           f"{totals.mean():.1f}, p50 {np.percentile(totals, 50):.0f}, p90 "
           f"{np.percentile(totals, 90):.0f}, p99 {np.percentile(totals, 99):.0f}, max "
           f"{totals.max()}; sentences per pair {sentences.sum(axis=1).mean():.2f}",
           f"{'width':>6} {'sentences kept':>15} {'pairs losing any':>17} "
           f"{'rows / unpacked tokens':>23}"]
  for width in widths:
    kept = packing.place(lengths, valid, width, rows)[1][:, 1:]
    lost = (sentences & ~kept).any(axis=1)
    lines.append(f"{width:>6} {100 * kept.sum() / max(sentences.sum(), 1):>14.2f}% "
                 f"{100 * lost.mean():>16.2f}% {width / unpacked:>23.3f}")
  return "\n".join(lines)


def main(argv):
  cli.check_args(argv)
  widths = [int(w) for w in FLAGS.widths]
  if min(widths) < FLAGS.sentence_context:
    raise ValueError(f"--widths must be at least --sentence_context={FLAGS.sentence_context}")
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = os.path.expanduser(FLAGS.data_dir) if FLAGS.data_dir else tmp
    if not FLAGS.data_dir:
      prepare.prepare(FLAGS.dataset, tmp, splits=(FLAGS.split,))
    source = builder.load_source(FLAGS.dataset, FLAGS.split, data_dir)
    lengths, valid = caption_lengths(source, FLAGS.max_sentences)
  print(f"{FLAGS.dataset}/{FLAGS.split}, at most {FLAGS.max_sentences} sentences of "
        f"{FLAGS.sentence_context} tokens")
  print(width_table(lengths, valid, widths, FLAGS.sentence_context, FLAGS.rows))


if __name__ == "__main__":
  define_flags()
  cli.run(main, expected=EXPECTED)
