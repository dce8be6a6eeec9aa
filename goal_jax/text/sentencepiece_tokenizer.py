"""SentencePiece tokenizers with character offsets: SigLIP's (the English c4 32k model) and
SigLIP 2's (Gemma's 256k), read from a checkpoint's `.model` file, or from its `tokenizer.json`
(through the `tokenizers` library) when the folder has no `.model`.

Backed by Google's `sentencepiece` library, so ids are the library's own; offsets come from the
pieces it returns (UTF-8 byte ranges of the input) turned into character ranges of the text as
given, without the whitespace a piece's leading '▁' stands for, so that, as for CLIP's BPE
(`goal_jax.text.tokenizer`), ranges are non-decreasing, non-overlapping and only whitespace lies
between them: sentence spans (TSL, MulCLIP's sub-captions, WPR's words) are cut by them.

How a batch is laid out follows big_vision's `tok(..., bos="no", eos="sticky")`, which SigLIP's
towers were trained on: no BOS, the text's tokens, then EOS repeated to the end of the context
(`pad_id` = EOS: "sticky"); a text too long for the context keeps its first `L - 1` tokens and
ends with EOS. SigLIP's text tower pools the last position, so it always reads an EOS.
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence

import numpy as np

from goal_jax.text.tokenizer import TokenBatch, map_lowered_offsets

MODEL_FILES = ("spiece.model", "tokenizer.model")  # transformers' SigLIP and Gemma names
JSON_FILE = "tokenizer.json"  # a `tokenizers` file, read when a folder has no .model
EOS_TOKENS = ("</s>", "<eos>")  # SigLIP's and Gemma's end of sequence


def _word_ranges(prepared: str, ranges) -> list[tuple[int, int]]:
  """Character ranges without the whitespace a piece's leading '▁' stands for; a piece that is
  only that mark gets the empty range where its word begins."""
  out = []
  for start, end in ranges:
    while start < end and prepared[start].isspace():
      start += 1
    if start == end:
      while start < len(prepared) and prepared[start].isspace():
        start += 1
      end = start
    out.append((start, end))
  return out


class _SigLIPText:
  """What both readers share: lowercasing, the sticky-EOS batch and decoding. A subclass has
  `eos_id`, `lowercase`, `_pieces(prepared) -> (ids, character ranges)` and `_decode(ids)`."""

  caption_start = 0  # no BOS: a caption's first token sits at position 0

  def _prepare(self, text: str) -> str:
    return text.lower() if self.lowercase else text

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without EOS."""
    return self._pieces(self._prepare(text))[0]

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids (as `encode`) and each token's (start, end) character range in `text`."""
    prepared = self._prepare(text)
    ids, ranges = self._pieces(prepared)
    offsets = _word_ranges(prepared, ranges)
    if prepared != text and len(prepared) != len(text):
      offsets = map_lowered_offsets(text, offsets)
    return ids, offsets

  def __call__(self, texts: str | Sequence[str], context_length: int = 64,
               normalize: bool = False, pad_id: int | None = None) -> TokenBatch:
    """`[N, context_length]`: tokens, then EOS to the end (big_vision's sticky EOS); a long
    text keeps `context_length - 1` tokens and its EOS.

    `normalize` and `pad_id` are accepted so that both families' tokenizers take the same call;
    the model normalises text itself (its own rules), and SigLIP pads with EOS.
    """
    del normalize, pad_id
    if isinstance(texts, str):
      texts = [texts]
    if context_length < 1:
      raise ValueError(f"context_length must be >= 1 (EOS), got {context_length}")
    ids = np.full((len(texts), context_length), self.eos_id, np.int32)
    lengths = np.zeros((len(texts),), np.int32)
    truncated = np.zeros((len(texts),), bool)
    room = context_length - 1
    for row, text in enumerate(texts):
      tokens = self.encode(text)
      truncated[row] = len(tokens) > room
      tokens = tokens[:room]
      ids[row, :len(tokens)] = tokens
      lengths[row] = len(tokens) + 1
    return TokenBatch(ids, lengths, truncated)

  def checkpoint_files(self) -> dict[str, bytes]:
    """`{name: contents}` a model folder keeps so that `from_checkpoint` reads this tokenizer
    back (the trainer writes them beside the model it saves)."""
    return {self.FILE_NAME: self._contents(),
            TEXT_FILE: json.dumps({"lowercase": self.lowercase}).encode()}

  def __reduce__(self):  # Grain's worker processes get a copy: rebuilt from the contents
    return (functools.partial(type(self), lowercase=self.lowercase), (self._contents(),))

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids` up to the first EOS."""
    ids = [int(i) for i in ids]
    ids = ids[:ids.index(self.eos_id)] if self.eos_id in ids else ids
    return self._decode(ids)


class SentencePieceTokenizer(_SigLIPText):
  """A SentencePiece model (`.model`) through Google's `sentencepiece` library.

  `lowercase`: lowercase texts first (SigLIP 2's authors recommend lowercase text; big_vision's
  SigLIP 1 colab does not lowercase). Offsets always index the text as given.
  """

  FILE_NAME = MODEL_FILES[0]

  def __init__(self, model_proto: bytes, *, lowercase: bool = False):
    import sentencepiece  # pylint: disable=g-import-not-at-top - only SigLIP models need it
    self._sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
    self.model_proto = model_proto
    self.lowercase = lowercase
    self.eos_id = self._sp.eos_id()
    if self.eos_id < 0:
      raise ValueError("the SentencePiece model defines no end-of-sequence piece, which SigLIP's "
                       "text tower pools")
    self.vocab_size = self._sp.get_piece_size()

  @classmethod
  def from_file(cls, path: str, *, lowercase: bool = False) -> "SentencePieceTokenizer":
    """From a `.model` file, or a folder holding `spiece.model` or `tokenizer.model`."""
    if os.path.isdir(path):
      found = [os.path.join(path, n) for n in MODEL_FILES if os.path.isfile(os.path.join(path, n))]
      if not found:
        raise FileNotFoundError(f"{path} holds no SentencePiece model ({' or '.join(MODEL_FILES)})")
      path = found[0]
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no SentencePiece model (a .model file, or a folder holding "
                              f"{' or '.join(MODEL_FILES)})")
    with open(path, "rb") as f:
      return cls(f.read(), lowercase=lowercase)

  def _pieces(self, prepared: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character ranges, from the library's pieces (UTF-8 byte ranges of `prepared`)."""
    pieces = self._sp.encode(prepared, return_type="proto").pieces
    char_of_byte = np.zeros(len(prepared.encode("utf-8")) + 1, np.int64)
    position = 0
    for i, char in enumerate(prepared):
      n = len(char.encode("utf-8"))
      char_of_byte[position:position + n] = i
      position += n
    char_of_byte[position] = len(prepared)
    return ([p.id for p in pieces],
            [(int(char_of_byte[p.begin]), int(char_of_byte[p.end])) for p in pieces])

  def _decode(self, ids: list[int]) -> str:
    return self._sp.decode(ids)

  def _contents(self) -> bytes:
    return self.model_proto


class JsonTokenizer(_SigLIPText):
  """A `tokenizer.json` (a checkpoint folder without a `.model`) through the `tokenizers` library,
  which gives ids and character offsets directly; EOS is `</s>` or `<eos>`."""

  FILE_NAME = JSON_FILE

  def __init__(self, json_text: str | bytes, *, lowercase: bool = False):
    if isinstance(json_text, bytes):
      json_text = json_text.decode("utf-8")
    import tokenizers  # pylint: disable=g-import-not-at-top - only SigLIP models need it
    self._tok = tokenizers.Tokenizer.from_str(json_text)
    self.json_text = json_text
    self.lowercase = lowercase
    found = [self._tok.token_to_id(t) for t in EOS_TOKENS if self._tok.token_to_id(t) is not None]
    if not found:
      raise ValueError(f"{JSON_FILE} defines no end-of-sequence token ({' or '.join(EOS_TOKENS)}), "
                       "which SigLIP's text tower pools")
    self.eos_id = found[0]
    self.vocab_size = self._tok.get_vocab_size()

  def _pieces(self, prepared: str) -> tuple[list[int], list[tuple[int, int]]]:
    encoding = self._tok.encode(prepared, add_special_tokens=False)
    # A piece that is only the word mark stands for whitespace (or the mark the pre-tokenizer
    # put before the text, to which the library gives the first character): no characters.
    ranges = [(start, start) if token == "▁" else (start, end)
              for token, (start, end) in zip(encoding.tokens, encoding.offsets)]
    return list(encoding.ids), ranges

  def _decode(self, ids: list[int]) -> str:
    return self._tok.decode(ids)

  def _contents(self) -> bytes:
    return self.json_text.encode("utf-8")


TEXT_FILE = "text_processing.json"  # written by `convert` beside the model: {"lowercase": bool}


def train_model(texts: Sequence[str], vocab_size: int) -> bytes:
  """A serialized SentencePiece model of `texts` laid out as SigLIP's (<pad> 0, </s> 1: EOS and
  padding, <unk> 2, no BOS), every character covered; `vocab_size` is an upper bound (a small
  corpus gets fewer pieces). For models trained from random weights (the demo).

  BPE, not SigLIP's Unigram: on a corpus of a few hundred words repeated thousands of times the
  Unigram trainer stops at ~60 pieces, nearly characters (measured on the demo's captions: 113
  pieces for a 35-word caption, against BPE's 41), and a 64-token context then holds only a
  caption's first sentences."""
  import io  # pylint: disable=g-import-not-at-top
  import sentencepiece  # pylint: disable=g-import-not-at-top - only SigLIP models need it
  out = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=out, vocab_size=vocab_size,
      hard_vocab_limit=False, model_type="bpe", character_coverage=1.0, pad_id=0, eos_id=1,
      unk_id=2, bos_id=-1, minloglevel=2)
  return out.getvalue()


def from_checkpoint(directory: str) -> SentencePieceTokenizer | JsonTokenizer:
  """The tokenizer a converted SigLIP checkpoint keeps, lowercasing as it says; or the one file
  given (a `.model`, or a `tokenizer.json`), not lowercasing."""
  if os.path.isfile(directory):
    if directory.endswith(".json"):
      with open(directory, encoding="utf-8") as f:
        return JsonTokenizer(f.read())
    return SentencePieceTokenizer.from_file(directory)
  lowercase = False
  path = os.path.join(directory, TEXT_FILE)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      lowercase = bool(json.load(f).get("lowercase", False))
  json_path = os.path.join(directory, JSON_FILE)
  if not any(os.path.isfile(os.path.join(directory, n)) for n in MODEL_FILES) and \
      os.path.isfile(json_path):
    with open(json_path, encoding="utf-8") as f:
      return JsonTokenizer(f.read(), lowercase=lowercase)
  try:
    return SentencePieceTokenizer.from_file(directory, lowercase=lowercase)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{e}; convert the model again with "
                            "--tokenizer=<its SentencePiece .model file>") from None
