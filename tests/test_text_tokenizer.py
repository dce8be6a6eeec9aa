"""CLIP tokenizer: ids against the committed HF-made table and live HF, offsets, truncation."""
import hashlib
import html
import json
import os
import random
import re
import sys
import time

import ftfy
import numpy as np
import pytest
import regex

from goal_jax.text import tokenizer as tokenizer_lib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_tokenizer_cases  # noqa: E402  pylint: disable=wrong-import-position

with open(make_tokenizer_cases.TABLE_PATH, encoding="utf-8") as _f:
  TABLE = json.load(_f)["cases"]
A_ID = 320  # 'a</w>': the first id of the table's "A photo of a cat." row.


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.get_tokenizer()


def _case_id(case):
  return repr(case["text"][:30])


def test_vendored_vocab_is_openai_file():
  with open(tokenizer_lib.VOCAB_PATH, "rb") as f:
    assert hashlib.md5(f.read()).hexdigest() == "933b7abbbbde62c36f02f0e6ccde464f"
  with open(os.path.join(os.path.dirname(tokenizer_lib.VOCAB_PATH), "LICENSE_CLIP_BPE")) as f:
    notice = f.read()
  assert "Copyright (c) 2021 OpenAI" in notice and "MIT License" in notice


def test_table_covers_the_hard_cases():
  texts = [case["text"] for case in TABLE]
  assert TABLE[0]["ids"][0] == A_ID
  assert any("&amp;amp;" in t for t in texts) and any("\u201c" in t for t in texts)
  assert any("\u2026" in t for t in texts) and any("\U0001f415" in t for t in texts)
  assert max(len(case["ids"]) for case in TABLE) > 248
  assert any(75 < len(case["ids"]) <= 246 for case in TABLE)  # Truncated at 77 only.


@pytest.mark.parametrize("case", TABLE, ids=_case_id)
def test_ids_equal_committed_table(tok, case):
  assert tok.encode(case["text"]) == case["ids"]
  for length in make_tokenizer_cases.CONTEXT_LENGTHS:
    batch = tok([case["text"]], context_length=length)
    row = case[f"row_{length}"]
    assert batch.ids.shape == (1, length) and batch.ids.dtype == np.int32
    np.testing.assert_array_equal(batch.ids[0], row + [0] * (length - len(row)))
    assert batch.lengths[0] == len(row)
    assert bool(batch.truncated[0]) == (len(case["ids"]) > length - 2)


def test_table_and_exported_files_match_live_hf(tok, tmp_path):
  transformers = pytest.importorskip("transformers")
  reference = make_tokenizer_cases.hf_reference_tokenizer()
  for case in TABLE:  # The committed table is what HF gives today.
    assert make_tokenizer_cases.reference_entry(reference, case["text"]) == case
  # The files the HF exporter writes load into HF (both ways) and give our ids.
  tok.write_hf_tokenizer_files(str(tmp_path), model_max_length=248)
  loaded = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
  with open(tmp_path / "vocab.json", encoding="utf-8") as f:
    vocab = json.load(f)
  with open(tmp_path / "merges.txt", encoding="utf-8") as f:
    merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line]
  built = transformers.CLIPTokenizer(vocab=vocab, merges=merges)
  assert loaded.model_max_length == 248
  for case in TABLE:
    cleaned = tokenizer_lib.normalize_text(case["text"]).lower()
    for hf in (loaded, built):
      assert hf(cleaned, add_special_tokens=False)["input_ids"] == tok.encode(case["text"])


def _check_offsets(tok, text):
  """Offsets tile the text's non-space characters and give back each word's bytes."""
  ids, offsets = tok.encode_with_offsets(text)
  assert len(ids) == len(offsets)
  covered, cursor = [], 0
  for start, end in offsets:
    assert cursor <= start <= end <= len(text)
    assert text[cursor:start].strip() == ""  # Only whitespace between tokens.
    covered.append(text[start:end])
    cursor = end
  assert text[cursor:].strip() == ""
  assert "".join(covered) == "".join(text.split())
  if len(text.lower()) != len(text):
    return
  # Group tokens into words (a word's last token carries '</w>'); the word's characters,
  # lowercased, encode to exactly its tokens' bytes.
  word_bytes, word_start = b"", None
  symbol_byte = tok._symbol_byte  # pylint: disable=protected-access
  for token_id, (start, end) in zip(ids, offsets):
    word_start = start if word_start is None else word_start
    piece = tok._tokens[token_id]  # pylint: disable=protected-access
    word_bytes += bytes(symbol_byte[c] for c in piece.replace("</w>", ""))
    if piece.endswith("</w>"):
      assert text[word_start:end].lower().encode("utf-8") == word_bytes
      word_bytes, word_start = b"", None


@pytest.mark.parametrize("case", TABLE, ids=_case_id)
def test_offsets_reconstruct_text(tok, case):
  text = tokenizer_lib.normalize_text(case["text"])
  ids, _ = tok.encode_with_offsets(text)
  assert ids == case["ids"]
  _check_offsets(tok, text)


def test_offsets_hand_checked(tok):
  # '京' is two BPE tokens: the first holds only its leading bytes, so gets an empty range there.
  text = "A \U0001f415 sits. Then \U0001f355 and \u6771\u4eac."
  _, offsets = tok.encode_with_offsets(text)
  assert offsets == [(0, 1), (2, 3), (4, 8), (8, 9), (10, 14), (15, 16), (17, 20), (21, 22),
                     (22, 22), (22, 23), (23, 24)]
  # 'İ' lowercases to 'i' + U+0307, two pre-tokenised words: 'i' owns nothing, U+0307 owns 'İ'.
  ids, offsets = tok.encode_with_offsets("\u0130stanbul")
  assert [tok.decode([i]) for i in ids][:2] == ["i", "\u0307"]
  assert offsets[:2] == [(0, 0), (0, 1)] and offsets[-1][1] == 8
  _check_offsets(tok, "\u0130stanbul \u0130I \u0130\U0001f415\u0130")


@pytest.mark.parametrize("n_words", [74, 75, 76, 300])
def test_truncation_keeps_eot_last(tok, n_words):
  batch = tok(["a " * n_words, "a"], context_length=77)
  kept = min(n_words, 75)
  expected = [tokenizer_lib.SOT_ID] + [A_ID] * kept + [tokenizer_lib.EOT_ID]
  np.testing.assert_array_equal(batch.ids[0], expected + [0] * (77 - len(expected)))
  np.testing.assert_array_equal(batch.ids[1, :4], [tokenizer_lib.SOT_ID, A_ID,
                                                   tokenizer_lib.EOT_ID, 0])
  np.testing.assert_array_equal(batch.lengths, [kept + 2, 3])
  np.testing.assert_array_equal(batch.truncated, [n_words > 75, False])
  assert batch.lengths.dtype == np.int32 and batch.truncated.dtype == bool


def test_special_token_strings_are_plain_text(tok):
  ids = tok.encode("a <|endoftext|> b <|startoftext|>")
  assert tokenizer_lib.EOT_ID not in ids and tokenizer_lib.SOT_ID not in ids
  assert tok.decode(ids).replace(" ", "") == "a<|endoftext|>b<|startoftext|>"
  with pytest.raises(ValueError, match="context_length"):
    tok(["a"], context_length=1)


def _reference_normalize(text):
  """OpenAI's cleaning, always through ftfy and `regex`, as make_tokenizer_cases writes it."""
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return regex.sub(r"\s+", " ", text).strip()


def test_ascii_fast_paths_agree_with_full_path():
  rng = random.Random(0)
  alphabet = [chr(i) for i in range(128)] + ["&amp;", "&#39;", "& ", "'s", "'ll", "abc"] * 8
  unicode_words = tokenizer_lib._WORD_PATTERN  # pylint: disable=protected-access
  for _ in range(3000):
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
    assert tokenizer_lib.normalize_text(text) == _reference_normalize(text), repr(text)
    lowered = text.lower()
    assert (tokenizer_lib._ASCII_WORD_PATTERN.findall(lowered)  # pylint: disable=protected-access
            == unicode_words.findall(lowered)), repr(text)


HF_RAW = "He said \u201chi\u201d  &amp; left.\n"


def test_hf_normal_form_hand_checked(tok):
  """GOAL tokenises with HF's fast tokenizer: NFC and whitespace only, so curly quotes stay."""
  assert tokenizer_lib.normalize_text(HF_RAW) == 'He said "hi" & left.'
  assert tokenizer_lib.normalize_text_hf(HF_RAW) == "He said \u201chi\u201d &amp; left."
  assert tokenizer_lib.normalize_text_hf("cafe\u0301") == "caf\u00e9"  # NFC composes
  pieces = lambda ids: [tok._tokens[i] for i in ids]  # pylint: disable=protected-access
  assert pieces(tok.encode(HF_RAW)) == [
      "he</w>", "said</w>", '"</w>', "hi</w>", '"</w>', "&</w>", "left</w>", ".</w>"]
  # Each curly quote is two byte tokens (UTF-8 e2 80 9c / e2 80 9d -> 'âĢ' + 'ľ' / 'Ŀ'), and
  # the entity stays three tokens: every later position moves by 4.
  assert pieces(tok.encode(HF_RAW, normalize="hf")) == [
      "he</w>", "said</w>", "\u00e2\u0122", "\u013e</w>", "hi</w>", "\u00e2\u0122", "\u013f</w>",
      "&</w>", "amp</w>", ";</w>", "left</w>", ".</w>"]
  row = tok([HF_RAW], 16, normalize="hf", pad_id=tokenizer_lib.EOT_ID).ids[0]
  assert row[:14].tolist() == ([tokenizer_lib.SOT_ID] + tok.encode(HF_RAW, normalize="hf")
                               + [tokenizer_lib.EOT_ID])
  assert row[14:].tolist() == [tokenizer_lib.EOT_ID] * 2  # HF pads with EOT
  with pytest.raises(ValueError, match="unknown text normalisation"):
    tok.encode("a", normalize="nfkc")


def test_hf_normal_form_equals_live_hf_fast_tokenizer(tok):
  pytest.importorskip("transformers")
  hf = make_tokenizer_cases.hf_reference_tokenizer()
  texts = [HF_RAW, "\u2018Caf\u00e9\u2019 \u2014 na\u0131\u0308ve\u2026 co\u00f6perate",
           "A sign reads \u201cNO PARKING.\u201d Overhead", "\uff21\uff22 fullwidth, \u00bd cup"]
  # Known exception: Python lowercases a final capital sigma to 'ς', HF's Rust to 'σ'.
  texts += [case["text"] for case in TABLE if "\u03a3" not in case["text"]]
  for text in texts:
    ours = tok([text], 77, normalize="hf", pad_id=tokenizer_lib.EOT_ID).ids[0].tolist()
    theirs = hf(text, truncation=True, max_length=77, padding="max_length")["input_ids"]
    assert ours == theirs, repr(text)


def test_decode_round_trip(tok):
  assert tok.decode(tok.encode("A photo of a cat.")) == "a photo of a cat ."
  batch = tok(["Caf\u00e9 \U0001f355 !~"], context_length=10)
  assert 0 in batch.ids[0, 1:batch.lengths[0]]  # '!' (inside '!~') is id 0, like the padding.
  assert tok.decode(batch.ids[0]) == "caf\u00e9 \U0001f355 !~"


def test_batch_speed_10k_long_captions(tok):
  """Prints the throughput quoted in tokenizer.py; checks rows against one-by-one encoding."""
  rng = random.Random(0)
  words = re.findall(r"\S+", " ".join(make_tokenizer_cases.LONG_SENTENCES))
  words = [w.encode("ascii", "ignore").decode() or "x" for w in words]
  captions = [" ".join(rng.choice(words) for _ in range(130)) + f" {i}." for i in range(10_000)]
  fresh = tokenizer_lib.ClipTokenizer()
  start = time.perf_counter()
  batch = fresh(captions, context_length=248)
  cold = time.perf_counter() - start
  start = time.perf_counter()
  fresh(captions, context_length=248, normalize=False)
  warm = time.perf_counter() - start
  print(f"\n10,000 captions of ~130 words -> [10000, 248]: {cold:.2f} s cold, "
        f"{warm:.2f} s warm without normalising; mean length {batch.lengths.mean():.0f}")
  for row in rng.sample(range(len(captions)), 20):
    expected = [tokenizer_lib.SOT_ID] + tok.encode(captions[row])[:246] + [tokenizer_lib.EOT_ID]
    np.testing.assert_array_equal(batch.ids[row, :len(expected)], expected)
    assert batch.lengths[row] == len(expected)


@pytest.mark.parametrize("pad_id", [0, tokenizer_lib.EOT_ID])
def test_shorten_is_the_tokenizer_at_the_shorter_context(tok, pad_id):
  """A row cut to 77 equals the text tokenised at 77 (SOT, 75 tokens, EOT), and says which lost
  tokens: 75 words fit, 76 do not."""
  texts = ["a dog", "x " * 75, "y " * 76, "word " * 120, ""]
  long = tok(texts, context_length=248, pad_id=pad_id)
  short = tok(texts, context_length=77, pad_id=pad_id)
  ids, truncated = tokenizer_lib.shorten(long.ids, 77)
  np.testing.assert_array_equal(ids, short.ids)
  assert truncated.tolist() == short.truncated.tolist() == [False, False, True, True, False]
