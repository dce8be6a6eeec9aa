"""A SentencePiece model trained at test time (no downloads), laid out as SigLIP's: <pad> 0,
</s> 1 (EOS, SigLIP's padding), <unk> 2, no BOS."""
import io

import sentencepiece


def train(sentences, vocab_size: int) -> bytes:
  """The serialized Unigram model of `sentences` (every character covered)."""
  out = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=out, vocab_size=vocab_size,
      model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      minloglevel=2)
  return out.getvalue()
