"""`synthetic` v3: held-out colour–shape pairs and background never in `train`/`test`/`test_hard`,
always in the transfer splits. Checked over every generated scene of a small draw, by parsing the
captions (what a model reads), not only the scene objects."""
import collections
import itertools
import re

import pytest

from goal_jax.data import builder, prepare, synthetic

HELD_OUT = set(synthetic.HELD_OUT_PAIRS)
_OBJECT = re.compile(r"A (small|large) (\w+) (\w+) (\w+)\.")
_RELATION = re.compile(r"The (\w+) (\w+) is [a-z ]+ the (\w+) (\w+)\.")
_SUMMARY = re.compile(r"Four shapes on a (plain|noisy) (\w+) background\.")


def _pairs_named(text):
  """Every (colour, shape) a caption or sentence names, parsed by word position."""
  named = [(colour, shape) for _, colour, _, shape in _OBJECT.findall(text)]
  for a_colour, a_shape, b_colour, b_shape in _RELATION.findall(text):
    named += [(a_colour, a_shape), (b_colour, b_shape)]
  return named


def _background(caption):
  return _SUMMARY.match(caption).group(2)


def _take(split, n, seed=0):
  return list(itertools.islice(synthetic.read_examples(None, split, seed=seed), n))


def test_the_held_out_pairs_are_a_diagonal_every_word_still_trained():
  colours = [c for c, _ in synthetic.HELD_OUT_PAIRS]
  shapes = [s for _, s in synthetic.HELD_OUT_PAIRS]
  assert sorted(colours) == sorted(synthetic.COLOURS) and sorted(shapes) == sorted(synthetic.SHAPES)


@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("split,count", [("train", 240), ("test", 80), ("test_hard", 120)])
def test_in_domain_splits_never_hold_a_held_out_pair_or_background(split, count, seed):
  seen = collections.Counter()
  for ex in _take(split, count, seed):
    named = _pairs_named(ex.caption)
    assert len(named) >= 4 and not HELD_OUT & set(named), ex.caption
    assert _background(ex.caption) != synthetic.HELD_OUT_BACKGROUND, ex.caption
    for pair in ex.local_pairs:
      assert not HELD_OUT & set(_pairs_named(pair.sentence))
      for negative in pair.hard_negatives:  # not even as a training negative
        assert not HELD_OUT & set(_pairs_named(negative)), negative
    seen.update(named)
  # Every other colour–shape pair is trained: 25 - 5 of them.
  if split == "train":
    assert len(set(p for p in seen if p[0] in synthetic.COLOURS)) == 20


@pytest.mark.parametrize("split,count", [("test_transfer", 120), ("test_transfer_hard", 120)])
def test_transfer_splits_hold_a_held_out_pair_in_every_base_scene(split, count):
  examples = _take(split, count)
  backgrounds = collections.Counter(_background(ex.caption) for ex in examples)
  held = collections.Counter()
  for ex in examples:
    named = set(_pairs_named(ex.caption))
    if split == "test_transfer" or ex.id.endswith("_base"):
      assert HELD_OUT & named, ex.caption
    held.update(HELD_OUT & named)
    assert not any(p.hard_negatives for p in ex.local_pairs)
  assert set(held) == HELD_OUT  # every held-out pair is tested
  assert synthetic.HELD_OUT_BACKGROUND in backgrounds and len(backgrounds) == 3


def test_transfer_hard_groups_edit_an_object_holding_a_held_out_pair():
  for group in range(40):
    base, *variants = synthetic.hard_group(group, split="test_transfer_hard")
    held = set(synthetic.held_out_objects(base))
    for edit, variant in zip(synthetic.group_edits(group), variants):
      changed = {k for k, (a, b) in enumerate(zip(base.objects, variant.objects)) if a != b}
      assert changed and (changed & held), (edit, changed, held)
      assert len(changed) == (2 if edit == "binding" else 1)


def test_in_domain_hard_variants_stay_in_domain_and_ids_parse():
  for group in range(40):
    assert all(synthetic.in_domain(s) for s in synthetic.hard_group(group))
  ex = _take("test_transfer_hard", 2)[1]
  assert ex.id == f"test_transfer_hard_g00000_1_{synthetic.group_edits(0)[0]}"
  assert synthetic.parse_hard_id(f"synthetic/{ex.id}") == (0, synthetic.group_edits(0)[0])


def test_version_2_has_no_transfer_splits_and_prepares_without_them(tmp_path, monkeypatch):
  assert synthetic.splits_of(2) == ("train", "test", "test_hard")
  assert list(synthetic.read_examples(None, "test_transfer", version=2)) == []
  assert synthetic.count(None, "test_transfer", version=2) == 0
  for split in synthetic.SPLITS:
    monkeypatch.setitem(synthetic.SPLIT_SIZES, split, 4)
  v2 = prepare.prepare("synthetic", tmp_path / "v2", version=2, verbose=False)
  assert sorted(v2["splits"]) == ["test", "test_hard", "train"]
  assert sorted(v2["dropped_empty"]) == ["test_transfer", "test_transfer_hard"]
  v3 = prepare.prepare("synthetic", tmp_path / "v3", verbose=False)
  assert sorted(v3["splits"]) == sorted(synthetic.SPLITS) and v3["version"] == "3.0.0"
  record = builder.decode_record(builder.load_source("synthetic", "test_transfer",
                                                     tmp_path / "v3")[0])
  assert record["caption"] == _take("test_transfer", 1)[0].caption
