"""Sentence splitters: hand-checked splits, exact offsets, GOAL's rule, names and versions."""
import importlib.metadata

import pytest

from goal_jax.text import sentences

# Hand-written captions and the sentences a careful reader finds in them.
SENTENCEX_CASES = {
    "quote": ('A sign on the pole reads "NO PARKING." Overhead, wires cross the street.',
              ['A sign on the pole reads "NO PARKING."', "Overhead, wires cross the street."]),
    "curly_quote": ("The banner says \u201cOPEN 24/7!\u201d Below it, a door stands ajar.",
                    ["The banner says \u201cOPEN 24/7!\u201d", "Below it, a door stands ajar."]),
    "abbreviations": ("Mr. Smith stands near the U.S. flag, about 6 ft. tall. He wears a hat, "
                      "e.g. a fedora.",
                      ["Mr. Smith stands near the U.S. flag, about 6 ft. tall.",
                       "He wears a hat, e.g. a fedora."]),
    "decimals": ("The scale shows 3.5 kg and the price is $12.99. A receipt lies beside it.",
                 ["The scale shows 3.5 kg and the price is $12.99.",
                  "A receipt lies beside it."]),
    "newlines": ("A cat sleeps on a sofa.\nA dog watches it from the rug.\n\n  The room is dim. ",
                 ["A cat sleeps on a sofa.", "A dog watches it from the rug.",
                  "The room is dim."]),
    "no_space": ("A lamp hangs from the pole.The street is empty.",
                 ["A lamp hangs from the pole.", "The street is empty."]),
    "lowercase_start": ("The car is red. there is a tree behind it. The sky is blue.",
                        ["The car is red.", "there is a tree behind it.", "The sky is blue."]),
    "ellipsis": ("The text fades out... Then a new line begins. Finally, the end.",
                 ["The text fades out...", "Then a new line begins.", "Finally, the end."]),
    "unicode": ("Un caf\u00e9 pr\u00e8s de la fen\u00eatre \U0001f355. \u00dcber dem Tisch "
                "h\u00e4ngt eine Lampe. \u6771\u4eac!",
                ["Un caf\u00e9 pr\u00e8s de la fen\u00eatre \U0001f355.",
                 "\u00dcber dem Tisch h\u00e4ngt eine Lampe.", "\u6771\u4eac!"]),
    "questions": ("What a view! Is that a boat? Yes, it is a sailboat.",
                  ["What a view!", "Is that a boat?", "Yes, it is a sailboat."]),
    "initial": ("The statue of Darrell K. Royal stands in the plaza. Students walk past it.",
                ["The statue of Darrell K. Royal stands in the plaza.",
                 "Students walk past it."]),
}


def _check_offsets_well_formed(text, spans):
  previous_end = 0
  for start, end in spans:
    assert previous_end <= start < end <= len(text)
    piece = text[start:end]
    assert piece == piece.strip()
    previous_end = end


@pytest.mark.parametrize("name", sorted(SENTENCEX_CASES))
def test_sentencex_hand_checked(name):
  text, expected = SENTENCEX_CASES[name]
  spans = sentences.split_sentences(text)  # sentencex is the default.
  assert [text[s:e] for s, e in spans] == expected
  _check_offsets_well_formed(text, spans)


def _goal_reference(text):
  """GOAL's code, as written in its repository: collapse, split('.'), strip, drop empties."""
  return [s.strip() for s in " ".join(text.split()).split(".") if s.strip()]


@pytest.mark.parametrize("name", sorted(SENTENCEX_CASES))
def test_goal_rule_matches_goal_code(name):
  text = SENTENCEX_CASES[name][0]
  spans = sentences.split_sentences(text, "goal")
  assert [" ".join(text[s:e].split()) for s, e in spans] == _goal_reference(text)
  _check_offsets_well_formed(text, spans)


def test_goal_rule_hand_checked():
  text = "  A cat.  The dog is 3.5 m\ttall...\nOk"
  spans = sentences.split_sentences(text, "goal")
  assert spans == [(2, 7), (10, 22), (23, 31), (35, 37)]
  assert [text[s:e] for s, e in spans] == ["A cat", "The dog is 3", "5 m\ttall", "Ok"]


@pytest.mark.parametrize("splitter", ["goal", "sentencex"])
@pytest.mark.parametrize("text", ["", "   ", " . . ", "No period at all"])
def test_degenerate_texts(splitter, text):
  spans = sentences.split_sentences(text, splitter)
  assert [text[s:e] for s, e in spans] == ([] if not text.strip(" .") else ["No period at all"])


def test_names_and_versions():
  sentencex_version = importlib.metadata.version("sentencex")
  assert sentences.get_splitter("sentencex").tag == f"sentencex@{sentencex_version}"
  assert sentences.get_splitter("goal").tag == "goal@1"
  assert sentences.get_splitter(f"sentencex@{sentencex_version}").name == "sentencex"
  with pytest.raises(ValueError, match="sentencex@0.0.1"):
    sentences.get_splitter("sentencex@0.0.1")
  with pytest.raises(ValueError, match="unknown sentence splitter 'punkt'"):
    sentences.get_splitter("punkt")
