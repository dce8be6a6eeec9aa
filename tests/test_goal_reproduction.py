"""The reproduction switch (`config.input.compat`): every behaviour of GOAL's released code at once.

Fixture `data/goal_reproduction/DCI_segment_sim_bbox_del_org.json`, written for these tests in
the format of GOAL's training file (https://github.com/PerceptualAI-Lab/GOAL), two images of
96 x 128 (h x w) whose pixels the tests draw:
- `sa_900001`: 'The shop sign says “OPEN”. A red car is parked by the road. Two bikes lean on
  the wall.' Best segment 'A red car is parked by the road', box (32, 48, 128, 96) with the
  JSON's crop size 96 wide, 48 high.
- `sa_900002`: a caption of 335 tokens whose best segment, the last sentence 'A small green kite
  flies above the roofs' (8 tokens), lies past the 248-token context.

Expected values are worked out by hand in the comments. `test_parity_with_official_helpers`
loads GOAL's own helpers from a local clone named by `GOAL_OFFICIAL_REPO` (skipped without one).
"""
import ast
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from goal_jax.configs import goal as goal_config
from goal_jax.data import builder, geometry, pipeline, prepare, reproduction
from goal_jax.text import sentences, spans
from goal_jax.text import tokenizer as tokenizer_lib

FIXTURE = (pathlib.Path(__file__).parent / "data" / "goal_reproduction"
           / "DCI_segment_sim_bbox_del_org.json")
IMAGE_HW = (96, 128)
EOT = tokenizer_lib.EOT_ID


def _raw_layout(root: pathlib.Path) -> None:
  (root / "datasets").mkdir(parents=True)
  shutil.copy(FIXTURE, root / "datasets" / FIXTURE.name)
  (root / "photos").mkdir()
  rng = np.random.default_rng(0)
  for name in ("sa_900001.jpg", "sa_900002.jpg"):
    pixels = rng.integers(0, 256, IMAGE_HW + (3,), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "photos" / name, quality=95)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """The fixture prepared with GOAL's splitter and with the default one: {splitter: data_dir}."""
  root = tmp_path_factory.mktemp("raw")
  _raw_layout(root)
  out = {"manual_dir": root}
  for splitter in ("goal", "sentencex"):
    out[splitter] = tmp_path_factory.mktemp(splitter)
    prepare.prepare("goal_json", out[splitter], root, splits=["dci_train"], splitter=splitter,
                    verbose=False)
  return out


def _records(data_dir):
  source = builder.load_source("goal_json", "dci_train", data_dir)
  return [builder.decode_record(source[i]) for i in range(len(source))]


def _config(**overrides):
  """L/14 at 224 px (a 16 x 16 grid), 248 tokens, GOAL's fields."""
  config = pipeline.default_config()
  config.update(dict(dataset="goal_json", split="dci_train", image_size=224, patch_size=14,
                     text_context=248, fields="global,local", batch_size=2, read_threads=1,
                     prefetch_buffer_size=2))
  config.update(overrides)
  return config


def _grid_mask(indices, grid=16):
  mask = np.zeros((grid * grid,), bool)
  mask[list(indices)] = True
  return mask


def _block(rows, cols, grid=16):
  return _grid_mask([r * grid + c for r in range(*rows) for c in range(*cols)], grid)


# --- the switch ------------------------------------------------------------------------------


def test_compat_sets_exactly_the_reproduction_fields():
  assert reproduction.resolve_compat(pipeline.default_config()) == dict(
      compat="", span_mode="exact", text_norm="clip", box_mode="exact", box_grid_patch=0,
      box_norm="image", geometry="center_crop")
  goal = reproduction.resolve_compat(_config(compat="goal"))
  assert goal == dict(compat="goal", span_mode="goal", text_norm="hf", box_mode="goal",
                      box_grid_patch=16, box_norm="json", geometry="center_crop")
  fixed = reproduction.resolve_compat(_config(compat="goal_fixed"))
  assert {k for k in goal if goal[k] != fixed[k]} == {"compat", "box_norm"}
  assert fixed["box_norm"] == "image"
  # Repeating a value the switch sets is fine; a third value is a conflict, named.
  assert reproduction.resolve_compat(_config(compat="goal", span_mode="goal")) == goal
  for field, value in (("geometry", "squash"), ("box_grid_patch", 14)):
    with pytest.raises(ValueError, match=f"config.compat=goal sets {field}="):
      reproduction.resolve(_config(compat="goal", **{field: value}))
  with pytest.raises(ValueError, match="expected '' or one of"):
    reproduction.resolve(_config(compat="official"))
  with pytest.raises(ValueError, match="need config.box_mode=goal"):
    reproduction.resolve(_config(box_norm="json"))


def test_goal_config_arg_reproduce():
  assert goal_config.get_config().input.compat == ""
  assert goal_config.get_config("reproduce=goal").input.compat == "goal"
  assert goal_config.get_config("reproduce=goal_fixed").input.compat == "goal_fixed"
  with pytest.raises(ValueError, match="reproduce='head'"):
    goal_config.get_config("reproduce=head")


def _differing(a, b):
  return {k for k in a if not np.array_equal(a[k], b[k])}


def test_switch_changes_exactly_those_behaviours(prepared):
  record = _records(prepared["goal"])[0]
  default = pipeline.process(record, _config())
  compat = pipeline.process(record, _config(compat="goal"))
  fields = dict(span_mode="goal", text_norm="hf", box_mode="goal", box_grid_patch=16,
                box_norm="json")
  assert _differing(compat, pipeline.process(record, _config(**fields))) == set()
  # Images never change; the text, its span and the patch set do.
  assert _differing(default, compat) == {"text", "local_text", "local_span_mask",
                                         "local_patch_mask"}
  # local_text differs only by HF's EOT padding: the sentence has no quote.
  n = int(np.argmax(default["local_text"] == EOT)) + 1
  np.testing.assert_array_equal(default["local_text"][:n], compat["local_text"][:n])
  # Each field alone changes only its own outputs.
  box_goal = dict(box_mode="goal")
  cases = [({}, dict(span_mode="goal"), {"local_span_mask"}),
           ({}, dict(text_norm="hf"), {"text", "local_text", "local_span_mask"}),
           ({}, box_goal, {"local_patch_mask"}),
           (box_goal, dict(box_mode="goal", box_grid_patch=16), {"local_patch_mask"}),
           (box_goal, dict(box_mode="goal", box_norm="json"), {"local_patch_mask"})]
  for base, changed, expected in cases:
    got = _differing(pipeline.process(record, _config(**base)),
                     pipeline.process(record, _config(**changed)))
    assert got == expected, changed


def test_hand_worked_compat_example(prepared):
  """sa_900001 under each mode; positions and patches worked out by hand."""
  tok = tokenizer_lib.get_tokenizer()
  record = _records(prepared["goal"])[0]
  assert record["caption"] == ('The shop sign says "OPEN". A red car is parked by the road. '
                               'Two bikes lean on the wall.')  # ftfy uncurled the quotes
  default = pipeline.process(record, _config())
  compat = pipeline.process(record, _config(compat="goal"))
  fixed = pipeline.process(record, _config(compat="goal_fixed"))
  pieces = lambda ids: [tok._tokens[i] for i in ids]  # pylint: disable=protected-access
  # OpenAI's form: the shop sign says " open ". a red car ... ('".' is one token).
  assert pieces(default["text"][1:9]) == ["the</w>", "shop</w>", "sign</w>", "says</w>", '"</w>',
                                          "open</w>", '".</w>', "a</w>"]
  # HF's form: each curly quote is two byte tokens, and '”.' three; padded with EOT.
  assert pieces(compat["text"][1:12]) == [
      "the</w>", "shop</w>", "sign</w>", "says</w>", "\u00e2\u0122", "\u013e</w>", "open</w>",
      "\u00e2\u0122", "\u013f", ".</w>", "a</w>"]
  assert compat["text"][27:].tolist() == [EOT] * (248 - 27)  # SOT + 25 tokens + EOT at 26
  # Span of 'A red car is parked by the road' (8 tokens): exact at 8..15 in OpenAI's form; GOAL's
  # in HF's form starts 3 tokens later (the quotes) and one more (its +1): 12..19, '.' included.
  assert np.flatnonzero(default["local_span_mask"]).tolist() == list(range(8, 16))
  assert np.flatnonzero(compat["local_span_mask"]).tolist() == list(range(12, 20))
  assert pieces(compat["text"][12:20])[-1] == ".</w>"
  # Patches, box (32, 48, 128, 96) in a 96 x 128 image, L/14 (16 x 16 tokens of 14 pixels):
  # - exact, centre crop: resized to 224 x 298, columns from 37 kept; x 32 -> 37.5, 128 -> 261
  #   (cut at 224), y 48 -> 112, 96 -> 224: cols 2..15, rows 8..15.
  np.testing.assert_array_equal(default["local_patch_mask"], _block((8, 16), (2, 16)))
  # - box_mode=goal alone, the stretch: x1' = round(32 * 224 / 128) = 56, y1' = 112,
  #   x2' = y2' = 224 on the model's 14-pixel cells: cols 4..15, rows 8..15.
  alone = pipeline.process(record, _config(box_mode="goal"))
  np.testing.assert_array_equal(alone["local_patch_mask"], _block((8, 16), (4, 16)))
  # - goal (HEAD): divided by the JSON's crop size, 96 wide and 48 high: x1' =
  #   round(32 * 224 / 96) = round(74.67) = 75, y1' = 224 -> 223, x2' = 299 -> 224, y2' = 448 ->
  #   224; 16-pixel cells: cols 4..13, row 13 of 14, indices 13 * 14 + c = 186..195, which on
  #   the 16 x 16 grid are row 11, cols 10..15 and row 12, cols 0..3.
  np.testing.assert_array_equal(compat["local_patch_mask"], _grid_mask(range(186, 196)))
  # - goal_fixed: divided by the image size: x1' = 56, y1' = 112, x2' = y2' = 224; 16-pixel
  #   cells: cols 3..13, rows 7..13 of 14, indices r * 14 + c read from the 16-grid's sequence.
  np.testing.assert_array_equal(
      fixed["local_patch_mask"], _grid_mask([r * 14 + c for r in range(7, 14)
                                             for c in range(3, 14)]))


def test_truncation_fallback_end_to_end(prepared):
  """sa_900002: its local sentence starts past the 248-token context."""
  tok = tokenizer_lib.get_tokenizer()
  record = _records(prepared["goal"])[1]
  assert len(tok.encode(record["caption"], normalize=False)) == 335
  default = pipeline.process(record, _config())
  compat = pipeline.process(record, _config(compat="goal"))
  # Exact: no position holds the sentence, so the row is empty (the loss drops it from TSL).
  assert not default["local_span_mask"].any() and default["local_valid"]
  # GOAL: the last n = 8 positions before EOT's (247): 239..246, other sentences' tokens.
  kite = tok.encode("A small green kite flies above the roofs")
  assert len(kite) == 8
  positions = np.flatnonzero(compat["local_span_mask"]).tolist()
  assert positions == list(range(239, 247)) and compat["text"][247] == EOT
  assert compat["text"][positions].tolist() != kite


# --- what reproduction mode refuses ------------------------------------------------------------


def test_wrong_splitter_is_refused_with_the_prepare_command(prepared):
  data_dir, root = prepared["sentencex"], prepared["manual_dir"]
  for compat in ("goal", "goal_fixed"):
    with pytest.raises(ValueError, match="split with 'sentencex@") as info:
      pipeline.make_dataset(_config(compat=compat), data_dir, train=False)
    assert (f"python -m goal_jax.prepare --dataset=goal_json --manual_dir={root} "
            f"--data_dir={data_dir} --split=dci_train --splitter=goal") in str(info.value)
  # A record reaching `process` anyway is refused too.
  with pytest.raises(ValueError, match="--splitter=goal"):
    pipeline.process(_records(data_dir)[0], _config(compat="goal"))
  # Without the switch, any splitter is fine (span_mode=goal alone is an ablation).
  next(iter(pipeline.make_dataset(_config(span_mode="goal"), data_dir, train=False)))
  # GOAL-split shards pass.
  batch = next(iter(pipeline.make_dataset(_config(compat="goal"), prepared["goal"], train=False)))
  assert batch["local_valid"].all()


def test_trainer_refuses_wrong_splitter_at_start_up(prepared):
  from goal_jax.training import loop  # pylint: disable=g-import-not-at-top
  with pytest.raises(loop.SetupError, match="--splitter=goal"):
    loop.check_reproduction(_config(compat="goal"), str(prepared["sentencex"]))
  loop.check_reproduction(_config(compat="goal"), str(prepared["goal"]))
  loop.check_reproduction(_config(), str(prepared["sentencex"]))


def test_records_without_raw_caption_or_json_size_are_refused(prepared):
  record = _records(prepared["goal"])[0]
  older = builder.decode_record({k: v for k, v in record.items()
                                 if k not in ("raw_caption", "pair_norm_size")})
  assert older["raw_caption"] == "" and not older["pair_norm_size"].any()
  with pytest.raises(ValueError, match="text_norm=hf .* lack"):
    reproduction.check_source(_config(compat="goal"), [older])
  # No JSON box size (older shards, or LISM-mined pairs): HEAD's normalisation cannot run, and
  # the error points to the authors' fixed version, which needs none.
  no_size = {**record, "pair_norm_size": np.zeros_like(record["pair_norm_size"])}
  with pytest.raises(ValueError, match="compat=goal_fixed"):
    reproduction.check_source(_config(compat="goal"), [no_size])
  reproduction.check_source(_config(compat="goal_fixed"), [no_size])
  assert pipeline.process(no_size, _config(compat="goal_fixed"))["local_valid"]


def test_hf_form_that_splits_differently_is_refused(prepared):
  # OpenAI's cleaning unescapes '&#46;' to '.', HF's keeps it: 2 pieces against the stored 3, so
  # the local pair's sentence index would point elsewhere.
  record = {**_records(prepared["goal"])[0], "raw_caption": "A red car&#46; Two bikes. Sign."}
  with pytest.raises(ValueError, match="splits into 2 sentences, the stored one into 3"):
    pipeline.process(record, _config(text_norm="hf"))


def test_stored_record_fields(prepared):
  records = _records(prepared["goal"])
  assert records[0]["splitter"] == "goal@1"
  assert records[0]["raw_caption"].startswith("The shop sign says \u201cOPEN\u201d.")
  # (height, width) of each pair's JSON box: best pair first in the fixture.
  np.testing.assert_array_equal(records[0]["pair_norm_size"], [[48, 96], [40, 32]])
  np.testing.assert_array_equal(records[1]["pair_norm_size"], [[32, 64]])


# --- parity with GOAL's own helpers, loaded from a local clone -----------------------------------


def _official_functions(path: pathlib.Path, names):
  """The named top-level functions of an official file, compiled alone (its imports, GPU pinning
  and wandb never run)."""
  import torch  # pylint: disable=g-import-not-at-top
  tree = ast.parse(path.read_text(encoding="utf-8"))
  body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
  namespace = {"torch": torch}
  exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
  return [namespace[name] for name in names]


@pytest.fixture(scope="module")
def official():
  repo = os.environ.get("GOAL_OFFICIAL_REPO")
  if not repo or not (pathlib.Path(repo) / "goal_loss_finetuning.py").is_file():
    pytest.skip("set GOAL_OFFICIAL_REPO to a clone of github.com/PerceptualAI-Lab/GOAL")
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  return pathlib.Path(repo)


def _hf_processor():
  """HF's CLIP tokenizer from the vendored vocabulary: what GOAL's `processor(text=...)` runs."""
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(pathlib.Path(__file__).parent))
  import make_tokenizer_cases  # pylint: disable=g-import-not-at-top
  return make_tokenizer_cases.hf_reference_tokenizer()


def _joint_pairs(repo: pathlib.Path):
  """(caption, sentence) pairs: the fixture's, plus GOAL's DCI joint test file where present."""
  data = json.loads(FIXTURE.read_text(encoding="utf-8"))
  pairs = [(e["original_caption"], s["caption"]) for e in data for s in e["segment"]]
  joint = repo / "datasets" / "DCI_test_joint_sim_max_11.json"
  if joint.is_file():
    items = json.loads(joint.read_text(encoding="utf-8"))
    half = len(items) // 2  # global pairs, then one local pair per image (in another order)
    captions = {pathlib.PurePosixPath(e["filename"]).stem: e["caption"] for e in items[:half]}
    for e in items[half:]:  # `.../<sa_id>.jpg_results/<crop>.png`
      key = pathlib.PurePosixPath(e["filename"]).parent.name.split(".jpg")[0]
      pairs.append((captions[key], e["caption"]))
  return pairs


def test_parity_with_official_helpers(official):
  import torch  # pylint: disable=g-import-not-at-top
  text_rule, box_rule = _official_functions(
      official / "goal_loss_finetuning.py",
      ["get_text_tokens_from_segment", "get_patch_tokens_from_bbox"])
  processor, tok = _hf_processor(), tokenizer_lib.get_tokenizer()
  length = 248
  eye = torch.eye(length)[None]
  pairs = _joint_pairs(official)
  for caption, sentence in pairs:
    theirs = np.flatnonzero(text_rule(eye, caption, sentence, processor)[0].numpy()).tolist()
    # Ours, as the pipeline gets there: HF's form, GOAL's splitter, the matching piece.
    hf_caption = tokenizer_lib.normalize_text_hf(caption)
    offsets = sentences.split_sentences(hf_caption, "goal")
    texts = [hf_caption[s:e] for s, e in offsets]
    key = " ".join(tokenizer_lib.normalize_text_hf(sentence).split())
    row = texts.index(key) if key in texts else None
    if row is None:  # not one of GOAL's pieces (the DCI file has a few): the span of the text
      offsets = [(hf_caption.find(key), hf_caption.find(key) + len(key))]
      row = 0
    ours = spans.caption_span_masks(hf_caption, offsets, length, "goal", tok)[row]
    assert np.flatnonzero(ours).tolist() == theirs, (caption[:60], sentence[:60])
  # Boxes: HEAD divides by the JSON's width/height and cuts 16-pixel cells, for B/16 and L/14;
  # the authors' later `goal.py` (commit 4c04bc8, where the clone has it) by the image size.
  fixed_rule = None
  if (official / "goal.py").is_file():
    fixed_rule, = _official_functions(official / "goal.py", ["get_patch_tokens_from_bbox"])
  rng = np.random.default_rng(0)
  for _ in range(300):
    h, w = (int(v) for v in rng.integers(50, 2000, 2))
    x1, x2 = sorted(int(v) for v in rng.integers(0, w + 1, 2))
    y1, y2 = sorted(int(v) for v in rng.integers(0, h + 1, 2))
    jw, jh = (int(v) for v in rng.integers(1, 2000, 2))
    bbox = {k: torch.tensor([v]) for k, v in dict(x1=x1, y1=y1, x2=x2, y2=y2, width=jw,
                                                  height=jh).items()}
    for patch, grid in ((16, 14), (14, 16)):
      tokens = torch.eye(1 + grid * grid)[None]
      pooled = box_rule(tokens, bbox, 0, None, image_size=224, patch_size=16)[0].numpy()
      if np.isnan(pooled).any():  # GOAL's empty set (mean of nothing); we fall back instead
        continue
      theirs = np.flatnonzero(pooled)
      ours = geometry.box_to_patch_mask(
          (x1, y1, x2, y2), (h, w), 224, patch, "center_crop", "goal", goal_patch=16,
          goal_norm_hw=(jh, jw))
      assert (np.flatnonzero(ours) + 1).tolist() == theirs.tolist(), (x1, y1, x2, y2, jw, jh)
      if fixed_rule is None:
        continue
      pooled = fixed_rule(tokens, bbox, 0, (w, h), image_size=224, patch_size=16)[0].numpy()
      if not np.isnan(pooled).any():
        ours = geometry.box_to_patch_mask((x1, y1, x2, y2), (h, w), 224, patch, "center_crop",
                                          "goal", goal_patch=16)
        assert (np.flatnonzero(ours) + 1).tolist() == np.flatnonzero(pooled).tolist()
