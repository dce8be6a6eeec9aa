"""CLIP's byte-level BPE tokenizer, OpenAI-identical, with character offsets.

Our own implementation over the vendored `bpe_simple_vocab_16e6.txt.gz` (MIT, OpenAI CLIP; see
`LICENSE_CLIP_BPE`), so the runtime needs neither torch nor transformers. Ids equal OpenAI's
`SimpleTokenizer` (checked against a committed table made with HF `CLIPTokenizer`, and live HF in
the tests), with one deliberate exception: the strings `<|startoftext|>` / `<|endoftext|>` inside
a caption are encoded as ordinary text, never as the special ids, so EOT stays the caption's last
token (pooling takes the first EOT).

Two steps, kept apart so that character offsets are stable:
- `normalize_text`: ftfy, double `html.unescape`, whitespace collapse, strip. The data converters
  store captions in this form; sentence offsets index it.
- encoding: lowercase, CLIP's pre-tokenisation regex, BPE with a word-level cache.

`normalize_text_hf` is the other normal form, that of HF's `CLIPTokenizerFast` (NFC, whitespace,
lower case; no ftfy, no unescaping), which GOAL's released code tokenises with. The BPE is the
same, so on the same normalised text the ids agree; the forms differ on curly quotes (ftfy makes
them ASCII, HF keeps them as two byte tokens each), mojibake and HTML entities.

Speed: 10,000 distinct captions of ~130 words (~700 characters, ~175 tokens) to [10000, 248],
one process, CPU seconds (the shared 2-core box was at load ~7, so wall time ran 2-3x higher):
- ASCII captions: 1.5 s (fast path: no ftfy; the word cache is warm after a few hundred captions);
- stored captions (`normalize=False`), non-ASCII in every caption: 2.0 s;
- raw non-ASCII captions (curly quotes in each): 19 s, ~90 % of it in `ftfy.fix_text`. The
  converters pay this once; the training pipeline reads normalised captions.
- `encode_with_offsets`: 2.4 s (ASCII) / 3.6 s (non-ASCII) per 10,000.
`tests/test_text_tokenizer.py::test_batch_speed_10k_long_captions` prints the figure.
"""
from __future__ import annotations

import functools
import gzip
import html
import itertools
import json
import math
import os
import re
import unicodedata
from typing import NamedTuple, Sequence

import ftfy
import numpy as np
import regex

SOT_ID = 49406
EOT_ID = 49407
VOCAB_SIZE = 49408
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
# CLIP keeps the first 48,894 merges: 256 bytes + 256 `</w>` bytes + merges + 2 specials = 49,408.
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2
VOCAB_PATH = os.path.join(os.path.dirname(__file__), "bpe_simple_vocab_16e6.txt.gz")

# CLIP's pre-tokenisation (applied to lowercased text): contractions, letter runs, single digits,
# runs of other non-space characters. OpenAI's pattern also lists the two special tokens first; we
# leave them out on purpose (module docstring).
_WORD_PATTERN = regex.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+", regex.IGNORECASE)
# The same split on lowercased ASCII text, ~3x faster with `re` (fuzz-checked in the tests).
# `regex`'s \s (Unicode White_Space) excludes \x1c-\x1f, which `re`'s \s includes: spelled out.
_ASCII_WORD_PATTERN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^ \t\n\x0b\x0c\ra-z0-9]+")
_WHITESPACE = regex.compile(r"\s+")
# ASCII text with no '\r', no control character but tab and newline, and no '&' except before
# whitespace or at the end (so no HTML entity): ftfy and
# `html.unescape` leave it unchanged (fuzz-checked in the tests), so we skip them (ftfy costs
# ~0.1-4 ms per caption).
_CLEAN_ASCII = re.compile(r"(?:[\x20-\x25\x27-\x7e\t\n]|&(?![^ \t\n]))*")
_MAX_CACHED_WORDS = 1 << 20


def normalize_text(text: str) -> str:
  """OpenAI CLIP's text cleaning without the lowercasing: the stored caption form.

  ftfy repairs mojibake and uncurls quotes, `html.unescape` twice undoes double-escaped
  entities (`&amp;quot;`), then whitespace runs become one space and the ends are stripped.
  """
  if text.isascii() and _CLEAN_ASCII.fullmatch(text):
    return " ".join(text.split())  # Here str.split's whitespace is exactly `regex`'s \s.
  text = html.unescape(html.unescape(ftfy.fix_text(text)))
  return _WHITESPACE.sub(" ", text).strip()


def normalize_text_hf(text: str) -> str:
  """HF `CLIPTokenizerFast`'s normal form without the lowercasing: NFC, whitespace collapse, strip.

  What GOAL's released code feeds the model (it tokenises with `transformers.AutoProcessor`,
  https://github.com/PerceptualAI-Lab/GOAL `goal_loss_finetuning.py`). Offsets into it stay
  stable, like `normalize_text`'s; encoding it with `normalize=False` gives HF's ids, except
  after a capital sigma ending a word (Python lowercases it to 'ς', HF's Rust to 'σ').
  """
  return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


NORMALIZERS = {"clip": normalize_text, "hf": normalize_text_hf}


def _normalizer(normalize: bool | str):
  """`normalize` as a function or None: True is "clip" (OpenAI's), False none, else by name."""
  if normalize is True:
    return normalize_text
  if normalize is False:
    return None
  if normalize not in NORMALIZERS:
    raise ValueError(f"unknown text normalisation {normalize!r}; expected True, False or one of "
                     f"{sorted(NORMALIZERS)}")
  return NORMALIZERS[normalize]


def _word_pattern(lowered: str):
  return _ASCII_WORD_PATTERN if lowered.isascii() else _WORD_PATTERN


def _byte_symbols() -> list[str]:
  """The printable stand-in character of each byte 0..255 (byte-level BPE alphabet).

  Bytes that print as themselves in Latin-1 keep their own character; the others (controls,
  space, soft hyphen) take code points from 256 on, in byte order.
  """
  keeps_itself = lambda b: 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255
  symbols, next_extra = [], 256
  for b in range(256):
    if keeps_itself(b):
      symbols.append(chr(b))
    else:
      symbols.append(chr(next_extra))
      next_extra += 1
  return symbols


def _read_merges(path: str) -> list[tuple[str, str]]:
  with gzip.open(path, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")
  # The shipped first line reads '"bpe_simple_vocab_16e6.txt#version: 0.2'.
  if "#version" not in lines[0]:
    raise ValueError(f"{path}: expected a '#version' header line, got {lines[0][:60]!r}")
  merges = [tuple(line.split()) for line in lines[1:1 + NUM_MERGES]]
  bad = [i for i, m in enumerate(merges) if len(m) != 2]
  if len(merges) != NUM_MERGES or bad:
    raise ValueError(f"{path}: expected {NUM_MERGES} merges of two symbols; got {len(merges)}, "
                     f"malformed lines {bad[:5]}")
  return merges


class TokenBatch(NamedTuple):
  """Fixed-shape token ids for a batch of texts.

  Attributes:
    ids: int32 [N, L]: SOT, tokens, EOT, then padding (`pad_id`, default 0). A truncated row
      ends with EOT at L-1.
    lengths: int32 [N]: number of non-pad positions, SOT and EOT included.
    truncated: bool [N]: the text had more than L-2 tokens.
  """
  ids: np.ndarray
  lengths: np.ndarray
  truncated: np.ndarray


class ClipTokenizer:
  """CLIP BPE: `encode`, `encode_with_offsets`, batch `__call__`, `decode`, HF export."""

  caption_start = 1  # SOT first: a caption's first token sits at position 1

  def checkpoint_files(self) -> dict[str, bytes]:
    """Nothing: CLIP's BPE is built in, so a model folder needs no copy of it."""
    return {}

  def __init__(self, vocab_path: str = VOCAB_PATH):
    self.merges = _read_merges(vocab_path)
    self._byte_symbol = _byte_symbols()
    base = sorted(self._byte_symbol)  # OpenAI's vocabulary order is code-point order.
    tokens = base + [s + END_OF_WORD for s in base] + ["".join(m) for m in self.merges]
    tokens += [SOT_TOKEN, EOT_TOKEN]
    self.vocab = {t: i for i, t in enumerate(tokens)}
    if len(self.vocab) != VOCAB_SIZE or self.vocab[EOT_TOKEN] != EOT_ID:
      raise ValueError(f"{vocab_path}: built {len(self.vocab)} distinct tokens, "
                       f"expected {VOCAB_SIZE} with EOT at {EOT_ID}")
    self._tokens = tokens
    self._symbol_byte = {s: b for b, s in enumerate(self._byte_symbol)}
    self._merge_rank = {m: r for r, m in enumerate(self.merges)}
    # word -> (token ids, (start, end) character ranges of each token within the word).
    self._cache: dict[str, tuple[tuple[int, ...], tuple[tuple[int, int], ...]]] = {}

  # --- one word -------------------------------------------------------------------------------

  def _bpe(self, word: str) -> list[str]:
    """Byte-level BPE of one pre-tokenised word; the last symbol carries `</w>`."""
    symbols = [self._byte_symbol[b] for b in word.encode("utf-8")]
    symbols[-1] += END_OF_WORD
    rank = self._merge_rank
    while len(symbols) > 1:
      pairs = list(zip(symbols, symbols[1:]))
      best = min(pairs, key=lambda p: rank.get(p, math.inf))
      if best not in rank:
        break
      merged, i = [], 0
      while i < len(symbols):  # Merge every occurrence, left to right, without overlap.
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
          merged.append(symbols[i] + symbols[i + 1])
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = merged
    return symbols

  def _encode_word(self, word: str):
    """Ids and within-word character ranges of one word, added to the word cache.

    A character belongs to the token holding its last UTF-8 byte. A token holding only leading
    bytes of a character (an emoji split in two) owns no character and gets the empty range
    (p, p) at that character's index p; concatenating the ranges rebuilds the word exactly.
    """
    pieces = self._bpe(word)
    ids = tuple(self.vocab[p] for p in pieces)
    byte_lengths = [len(p) for p in pieces]
    byte_lengths[-1] -= len(END_OF_WORD)
    if word.isascii():
      ends = list(itertools.accumulate(byte_lengths))
      ranges = tuple(zip([0] + ends[:-1], ends))
    else:
      ranges = _byte_ranges_to_char_ranges(word, byte_lengths)
    if len(self._cache) >= _MAX_CACHED_WORDS:
      self._cache.clear()
    self._cache[word] = (ids, ranges)
    return ids, ranges

  # --- public API -----------------------------------------------------------------------------

  def encode(self, text: str, normalize: bool | str = True) -> list[int]:
    """Token ids of `text` without SOT/EOT (OpenAI `SimpleTokenizer.encode`).

    Args:
      text: any text.
      normalize: apply `normalize_text` first (True or "clip": OpenAI does), or
        `normalize_text_hf` ("hf": HF's fast tokenizer does). Pass False for text that is already
        in normal form (stored captions), so the ids agree with `encode_with_offsets` even on
        rare texts where normalising twice differs (triple-escaped HTML).
    """
    normalizer = _normalizer(normalize)
    if normalizer is not None:
      text = normalizer(text)
    lowered = text.lower()
    cache, ids = self._cache, []
    for word in _word_pattern(lowered).findall(lowered):
      ids += (cache.get(word) or self._encode_word(word))[0]
    return ids

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids (as `encode(text, normalize=False)`) and each token's (start, end) range in `text`.

    `text` should already be `normalize_text` output: offsets index it as given. Ranges are
    non-decreasing and non-overlapping, and only whitespace lies between them. Lowercasing that
    changes length ('İ' -> 'i̇') is mapped back, a character going to the token that holds the
    last byte of its lowercase form.
    """
    lowered = text.lower()
    cache, ids, offsets, end = self._cache, [], [], 0
    for word in _word_pattern(lowered).findall(lowered):
      word_ids, ranges = cache.get(word) or self._encode_word(word)
      # Only whitespace lies between words, so the next occurrence is the match (faster than
      # `finditer` match objects).
      start = lowered.find(word, end)
      end = start + len(word)
      ids += word_ids
      if len(ranges) == 1:
        offsets.append((start, end))
      else:
        offsets += [(start + s, start + e) for s, e in ranges]
    if len(lowered) != len(text):
      offsets = map_lowered_offsets(text, offsets)
    return ids, offsets

  def __call__(self, texts: str | Sequence[str], context_length: int = 77,
               normalize: bool | str = True, pad_id: int = 0) -> TokenBatch:
    """Tokenise a batch to `[N, context_length]`: SOT ... EOT, padded, EOT kept on truncation.

    `normalize` as in `encode`. `pad_id`: 0 as OpenAI's tokenizer; HF pads with EOT (49407).
    The model pools at the first EOT, so either pad gives the same pooled embedding.
    """
    if isinstance(texts, str):
      texts = [texts]
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2 (SOT and EOT), got {context_length}")
    ids = np.full((len(texts), context_length), pad_id, np.int32)
    lengths = np.zeros((len(texts),), np.int32)
    truncated = np.zeros((len(texts),), bool)
    room = context_length - 2
    for row, text in enumerate(texts):
      tokens = self.encode(text, normalize=normalize)
      truncated[row] = len(tokens) > room
      tokens = tokens[:room]
      ids[row, 0] = SOT_ID
      ids[row, 1:len(tokens) + 1] = tokens
      ids[row, len(tokens) + 1] = EOT_ID
      lengths[row] = len(tokens) + 2
    return TokenBatch(ids, lengths, truncated)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids` up to the first EOT (lowercased; word ends become spaces; SOT dropped).

    Stopping at EOT drops the 0-padding, which cannot be told from '!' (id 0) by value.
    """
    ids = [int(i) for i in ids]
    ids = ids[:ids.index(EOT_ID)] if EOT_ID in ids else ids
    pieces = [self._tokens[i] for i in ids if i != SOT_ID]
    symbols = "".join(pieces).replace(END_OF_WORD, " ")
    raw = bytes(self._symbol_byte[c] if c != " " else 32 for c in symbols)
    return raw.decode("utf-8", errors="replace").strip()

  def write_hf_tokenizer_files(self, out_dir: str, model_max_length: int = 77) -> list[str]:
    """Write vocab.json, merges.txt and configs that `transformers.CLIPTokenizer` loads.

    The exported model directory gets these so `CLIPTokenizer.from_pretrained(out_dir)` works
    offline. For identical ids feed HF `normalize_text(text).lower()`: HF applies no
    `html.unescape`, and its own lowercasing lacks Python's Greek final-sigma rule.
    Returns the written paths.
    """
    os.makedirs(out_dir, exist_ok=True)
    special = {"bos_token": SOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN,
               "pad_token": EOT_TOKEN}
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
              "do_lower_case": True, "errors": "replace", "add_prefix_space": False}
    files = {
        "vocab.json": json.dumps(self.vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges),
        "special_tokens_map.json": json.dumps(special, indent=2),
        "tokenizer_config.json": json.dumps(config, indent=2),
    }
    paths = []
    for name, content in files.items():
      path = os.path.join(out_dir, name)
      with open(path, "w", encoding="utf-8") as f:
        f.write(content)
      paths.append(path)
    return paths


def _byte_ranges_to_char_ranges(word: str, byte_lengths: list[int]):
  """Character range of each token in `word` from its byte length (rule in `_encode_word`)."""
  last_byte_of_char = np.cumsum([len(c.encode("utf-8")) for c in word]) - 1
  ranges, byte_start = [], 0
  for n in byte_lengths:
    byte_end = byte_start + n
    first = int(np.searchsorted(last_byte_of_char, byte_start))  # First char ending in range.
    stop = int(np.searchsorted(last_byte_of_char, byte_end))  # First char ending after it.
    ranges.append((first, stop) if stop > first else (first, first))
    byte_start = byte_end
  return tuple(ranges)


def map_lowered_offsets(text: str, offsets):
  """Map ranges in `text.lower()` back to `text`, where some characters lowercase to several."""
  origin, is_last = [], []  # Per lowered character: source index, whether last of its source.
  for i, char in enumerate(text):
    n = len(char.lower())
    origin.extend([i] * n)
    is_last.extend([False] * (n - 1) + [True])
  mapped = []
  for s, e in offsets:
    owned = [origin[j] for j in range(s, e) if is_last[j]]
    mapped.append((owned[0], owned[-1] + 1) if owned else (origin[s], origin[s]))
  return mapped


@functools.lru_cache(maxsize=None)
def get_tokenizer() -> ClipTokenizer:
  """The shared tokenizer (building it reads the 1.3 MB vocabulary once, ~0.3 s)."""
  return ClipTokenizer()


def shorten(ids: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
  """`[..., L]` token rows cut to `context` as the tokenizer would have made them there (SOT,
  the first `context` - 2 tokens, EOT), and which rows lost tokens: their EOT (the first
  largest id) sat at or past `context` - 1."""
  ids = np.asarray(ids)
  ends = np.argmax(ids, axis=-1)
  truncated = ends > context - 1
  out = ids[..., :context].copy()
  out[truncated, context - 1] = EOT_ID
  return out, truncated
