"""Span masks: hand-checked positions, GOAL's released index rule and its fallbacks, truncation."""
import numpy as np
import pytest

from goal_jax.text import sentences
from goal_jax.text import spans
from goal_jax.text import tokenizer as tokenizer_lib

# Tokens: a red car . it is parked near a tree .  -> positions 1 .. 11, EOT at 12.
CAPTION = "A red car. It is parked near a tree."


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.get_tokenizer()


def _positions(masks):
  return [np.flatnonzero(row).tolist() for row in masks]


def test_caption_tokens_as_hand_listed(tok):
  ids, offsets = tok.encode_with_offsets(CAPTION)
  assert [tok.decode([i]) for i in ids] == "a red car . it is parked near a tree .".split()
  assert offsets[3] == (9, 10) and offsets[-1] == (35, 36)


@pytest.mark.parametrize("splitter, mode, context_length, expected", [
    # The goal splitter leaves the periods out; exact spans stop before them.
    ("goal", "exact", 77, [[1, 2, 3], [5, 6, 7, 8, 9, 10]]),
    # GOAL: first token dropped, the following '.' included.
    ("goal", "goal", 77, [[2, 3, 4], [6, 7, 8, 9, 10, 11]]),
    ("sentencex", "exact", 77, [[1, 2, 3, 4], [5, 6, 7, 8, 9, 10, 11]]),
    # Context 8: positions 1..6 hold 'a red car . it is'; sentence 2 is cut to 'it is'.
    ("goal", "exact", 8, [[1, 2, 3], [5, 6]]),
    ("goal", "goal", 8, [[2, 3, 4], [6]]),
    ("sentencex", "exact", 8, [[1, 2, 3, 4], [5, 6]]),
    # Context 5: positions 1..3 hold 'a red car'; sentence 2 is truncated away. Exact: empty.
    # GOAL: its start 2 + 4 ('a red car .') = 6 >= 5, so it pools the last n = 6 positions before
    # EOT's (4), clipped at 1: 'a red car', sentence 1's tokens.
    ("goal", "exact", 5, [[1, 2, 3], []]),
    ("goal", "goal", 5, [[2, 3], [1, 2, 3]]),
    # sentencex keeps the periods, so no piece equals a sentence: GOAL finds the prefix by
    # `str.find` ('' and 'A red car. '), n counts the '.' too.
    ("sentencex", "goal", 77, [[2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12]]),
    ("sentencex", "goal", 5, [[2, 3], [1, 2, 3]]),
    # Context 7: positions 1..5 hold 'a red car . it', EOT at 6. Sentence 2 starts at 6 = L - 1,
    # so [6, min(6 + 6, 6)) is empty and GOAL falls back to [1, min(1 + 6, 7)): EOT included.
    ("goal", "goal", 7, [[2, 3, 4], [1, 2, 3, 4, 5, 6]]),
])
def test_hand_checked(tok, splitter, mode, context_length, expected):
  sentence_offsets = sentences.split_sentences(CAPTION, splitter)
  masks = spans.caption_span_masks(CAPTION, sentence_offsets, context_length, mode, tok)
  assert masks.shape == (2, context_length) and masks.dtype == bool
  assert _positions(masks) == expected


def test_goal_shift_reaches_eot_without_final_period(tok):
  caption = "A red car. It is parked"  # a red car . it is parked -> positions 1..7, EOT at 8.
  masks = spans.caption_span_masks(caption, sentences.split_goal(caption), 77, "goal", tok)
  assert _positions(masks) == [[2, 3, 4], [6, 7, 8]]  # GOAL's span includes EOT here.


def test_split_character_keeps_all_its_tokens(tok):
  caption = "A \U0001f415 sits. Then \U0001f355 and \u6771\u4eac."  # '京' is two tokens.
  sentence_offsets = sentences.split_sentences(caption)
  masks = spans.caption_span_masks(caption, sentence_offsets, 77, "exact", tok)
  # a dog sits . | then pizza and 東 京(1/2) 京(2/2) .
  assert _positions(masks) == [[1, 2, 3, 4], [5, 6, 7, 8, 9, 10, 11]]
  one_char = spans.span_masks(tok.encode_with_offsets(caption)[1], [(22, 23)], 77)
  assert _positions(one_char) == [[9, 10]]


def _long_caption(n_sentences=40):
  colours = ["red", "blue", "green", "yellow", "white", "black", "grey", "brown"]
  things = ["bicycle", "umbrella", "lamp post", "window", "bench", "dog", "car", "sign"]
  places = ["door", "fountain", "corner of the street", "tall tree", "shop front"]
  return "A busy street scene. " + " ".join(
      f"Object {i} is a {colours[i % 8]} {things[(3 * i) % 8]} near the {places[i % 5]}."
      for i in range(n_sentences))


def _goal_code_positions(caption, k, context_length, encode):
  """GOAL's `get_text_tokens_from_segment` index rule, written from its source (goal_loss_finetuning.py),
  for GOAL's own pieces (k: the piece's index), with both fallbacks."""
  pieces = [s.strip() for s in " ".join(caption.split()).split(".") if s.strip()]
  n_seg = len(encode(pieces[k]))
  prefix = ". ".join(pieces[:k]) + (". " if k > 0 else "")
  start = len(encode(prefix)) + 2  # GOAL counts the prefix tokenised with SOT and EOT.
  if start >= context_length:  # Truncated away: the last n_seg positions before EOT's.
    return list(range(max(1, context_length - 1 - n_seg), context_length - 1))
  end = min(start + n_seg, context_length - 1)
  return list(range(start, end)) or list(range(1, min(1 + n_seg, context_length)))


@pytest.mark.parametrize("context_length", [77, 248])
def test_goal_mode_equals_goal_code(tok, context_length):
  caption = _long_caption()
  batch = tok(caption, context_length, normalize=False)
  assert batch.truncated[0]  # Some sentences are cut, some fall past the context.
  sentence_offsets = sentences.split_goal(caption)
  goal = spans.caption_span_masks(caption, sentence_offsets, context_length, "goal", tok)
  exact = spans.caption_span_masks(caption, sentence_offsets, context_length, "exact", tok)
  past_rows, cut_rows = 0, 0
  for k, (start, end) in enumerate(sentence_offsets):
    expected = _goal_code_positions(caption, k, context_length, tok.encode)
    assert _positions(goal[k:k + 1])[0] == expected, k
    # Exact positions hold the sentence's own ids, cut where the context ends.
    sentence_ids = tok.encode(caption[start:end])
    kept = batch.ids[0, exact[k]].tolist()
    assert kept == sentence_ids[:len(kept)], k
    cut_rows += 0 < len(kept) < len(sentence_ids)
    if not kept:  # Truncated away: exact leaves it empty, GOAL pools the context's last tokens.
      past_rows += 1
      assert expected[-1] == context_length - 2 and len(expected) == len(sentence_ids)
    else:  # Otherwise GOAL's span is the exact one, one position later (cut at L - 2).
      shifted = [p + 1 for p in np.flatnonzero(exact[k]) if p + 1 < context_length - 1]
      if len(kept) == len(sentence_ids):
        assert expected == shifted, k
  assert 0 < past_rows < len(sentence_offsets) and cut_rows == 1
  # Positions 1 .. L-2 are all caption tokens: each in one sentence, or a '.' between them.
  periods = batch.ids[0, 1:context_length - 1] == tok.encode(".")[0]
  np.testing.assert_array_equal(exact.sum(0)[1:context_length - 1], ~periods)
  assert not goal[:, 0].any() and not goal[:, context_length - 1].any()


def test_goal_span_takes_the_first_equal_piece(tok):
  # GOAL looks a sentence up by its text, so a repeated sentence gets the first one's span.
  caption = "A dog. A cat. A dog."
  masks = spans.caption_span_masks(caption, sentences.split_goal(caption), 77, "goal", tok)
  assert _positions(masks) == [[2, 3], [5, 6], [2, 3]]  # a dog . a cat . a dog .


def test_exact_mode_tiles_caption_with_sentencex(tok):
  caption = tokenizer_lib.normalize_text(
      "Its awning reads \u201cBREAD & CO.\u201d in gold. A sign says 3.5 t max. "
      "Two bikes lean on a rail\u2026 The sky is grey!")
  sentence_offsets = sentences.split_sentences(caption)
  masks = spans.caption_span_masks(caption, sentence_offsets, 77, "exact", tok)
  n_tokens = len(tok.encode(caption, normalize=False))
  # Every caption token belongs to exactly one sentence, in order.
  np.testing.assert_array_equal(masks.sum(0)[1:1 + n_tokens], np.ones(n_tokens))
  firsts = [row.nonzero()[0][0] for row in masks]
  assert firsts == sorted(firsts)
  assert [caption[s:e] for s, e in sentence_offsets] == [  # sentencex keeps '…' inside.
      'Its awning reads "BREAD & CO." in gold.', "A sign says 3.5 t max.",
      "Two bikes lean on a rail… The sky is grey!"]


def test_bad_input(tok):
  assert spans.span_masks([(0, 1)], [], 77).shape == (0, 77)
  with pytest.raises(ValueError, match="unknown span mode"):
    spans.caption_span_masks("A b.", [(0, 1)], 77, mode="shifted", tokenizer=tok)
  with pytest.raises(ValueError, match="context_length"):
    spans.caption_span_masks("A b.", [(0, 1)], 2, mode="goal", tokenizer=tok)
  with pytest.raises(ValueError, match=r"sentence 1 has end < start"):
    spans.span_masks([(0, 1)], [(0, 1), (5, 2)], 77)
  with pytest.raises(ValueError, match="context_length"):
    spans.span_masks([(0, 1)], [(0, 1)], 2)
