"""SentencePiece tokenizers (SigLIP's) on a model trained here: ids, offsets, the batch layout."""
import numpy as np
import pytest

sentencepiece = pytest.importorskip("sentencepiece")

import _spm  # noqa: E402
from goal_jax.text import sentencepiece_tokenizer  # noqa: E402

CAPTIONS = [
    "A small red circle sits beside a large blue square.",
    "Café au lait — a naïve façade, 3.5 cm wide, in İstanbul’s old town.",
    "Über den Wolken: the skyline at dusk, with «quotes» and emoji-free text.",
    "Two   spaces and\ttabs between words; the end.",
]


@pytest.fixture(scope="module")
def model_proto():
  out = _spm.train(CAPTIONS * 40, 64)
  return out


def test_ids_are_the_library_s(model_proto):
  tok = sentencepiece_tokenizer.SentencePieceTokenizer(model_proto)
  library = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
  for text in CAPTIONS:
    assert tok.encode(text) == library.encode(text)
    assert tok.encode_with_offsets(text)[0] == library.encode(text)


def test_offsets_are_the_library_s_pieces_in_characters(model_proto):
  """Each range holds the text of the library's own byte range for that piece, without the
  whitespace its '▁' marks; ranges do not overlap and only whitespace lies between them."""
  tok = sentencepiece_tokenizer.SentencePieceTokenizer(model_proto)
  library = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
  for text in CAPTIONS:
    _, offsets = tok.encode_with_offsets(text)
    raw = text.encode("utf-8")
    pieces = library.encode(text, return_type="proto").pieces
    assert len(pieces) == len(offsets)
    for piece, (start, end) in zip(pieces, offsets):
      assert text[start:end] == raw[piece.begin:piece.end].decode("utf-8").lstrip()
    previous_end = 0
    for start, end in offsets:
      assert previous_end <= start <= end
      assert text[previous_end:start].strip() == ""
      previous_end = end
    assert text[previous_end:].strip() == ""


def test_lowercase_offsets_index_the_text_as_given(model_proto):
  """'İ' lowercases to two characters ('i' + a combining dot): ranges still index the input."""
  tok = sentencepiece_tokenizer.SentencePieceTokenizer(model_proto, lowercase=True)
  text = "İstanbul’s old TOWN"
  ids, offsets = tok.encode_with_offsets(text)
  assert ids == tok.encode(text) == list(sentencepiece.SentencePieceProcessor(
      model_proto=model_proto).encode(text.lower()))
  covered = "".join(text[s:e] for s, e in offsets)
  assert covered == text.replace(" ", "")
  assert text[offsets[-1][0]:offsets[-1][1]] in ("TOWN", "N", "WN", "OWN")


def test_batch_ends_with_sticky_eos(model_proto, tmp_path):
  (tmp_path / "spiece.model").write_bytes(model_proto)
  tok = sentencepiece_tokenizer.SentencePieceTokenizer.from_file(str(tmp_path))
  short, long = "A red square.", " ".join(CAPTIONS)
  n = len(tok.encode(short))
  context = n + 5
  batch = tok([short, long], context_length=context)
  assert len(tok.encode(long)) > context
  np.testing.assert_array_equal(batch.ids[0, :n], tok.encode(short))
  assert (batch.ids[0, n:] == tok.eos_id).all()  # EOS, then EOS to the end: the last reads EOS
  np.testing.assert_array_equal(batch.ids[1, :-1], tok.encode(long)[:context - 1])
  assert batch.ids[1, -1] == tok.eos_id
  assert batch.lengths.tolist() == [n + 1, context] and batch.truncated.tolist() == [False, True]
  assert tok.decode(batch.ids[0]) == short
  with pytest.raises(FileNotFoundError, match="spiece.model"):
    sentencepiece_tokenizer.SentencePieceTokenizer.from_file(str(tmp_path / "nothing"))


def _tokenizer_json(model_proto):
  """The same Unigram model as a `tokenizers` file (what a folder without a .model carries)."""
  tokenizers = pytest.importorskip("tokenizers")
  library = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
  vocab = [(library.id_to_piece(i), library.get_score(i)) for i in range(library.get_piece_size())]
  tok = tokenizers.Tokenizer(tokenizers.models.Unigram(vocab, unk_id=library.unk_id()))
  tok.normalizer = tokenizers.normalizers.NFKC()
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
  tok.decoder = tokenizers.decoders.Metaspace(replacement="▁", prepend_scheme="always")
  return tok


def test_a_tokenizer_json_reads_the_same_way(model_proto, tmp_path):
  """A checkpoint keeping only `tokenizer.json`: ids and offsets are the `tokenizers` library's
  (without the whitespace of '▁'), the batch as for a .model."""
  library = _tokenizer_json(model_proto)
  (tmp_path / "tokenizer.json").write_text(library.to_str(), encoding="utf-8")
  tok = sentencepiece_tokenizer.from_checkpoint(str(tmp_path))
  assert isinstance(tok, sentencepiece_tokenizer.JsonTokenizer) and tok.eos_id == 1
  for text in CAPTIONS:
    encoding = library.encode(text, add_special_tokens=False)
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == encoding.ids == tok.encode(text)
    for (start, end), token, (lib_start, lib_end) in zip(offsets, encoding.tokens,
                                                         encoding.offsets):
      # The word mark alone holds no characters (the library lends it the first one).
      want = "" if token == "▁" else text[lib_start:lib_end].lstrip()
      assert text[start:end] == want
    previous_end = 0
    for start, end in offsets:
      assert previous_end <= start <= end and text[previous_end:start].strip() == ""
      previous_end = end
  batch = tok(["A red square."], context_length=12)
  n = len(tok.encode("A red square."))
  assert (batch.ids[0, n:] == 1).all() and batch.lengths.tolist() == [n + 1]
