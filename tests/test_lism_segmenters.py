"""Segmenter plug-ins: label/mask -> box helpers, Felzenszwalb and SLIC boxes, oracle, registry."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from goal_jax.data import synthetic
from goal_jax.lism import segmenters


def _iou(a, b):
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_labels_to_boxes_hand_case():
  labels = np.array([[7, 7, 3, 3],
                     [7, 5, 5, 3],
                     [5, 5, 5, 3]])
  seg = segmenters.labels_to_boxes(labels)
  # Labels in sorted order 3, 5, 7; boxes (x1, y1, x2, y2) with exclusive ends.
  np.testing.assert_array_equal(seg.boxes, [[2, 0, 4, 3], [0, 1, 3, 3], [0, 0, 2, 2]])
  np.testing.assert_array_equal(seg.areas, [4, 5, 3])
  assert not seg.in_original


def test_masks_to_boxes_hand_case_drops_empty_masks():
  masks = np.zeros((3, 5, 6), bool)
  masks[0, 1:3, 2:5] = True
  masks[0, 4, 0] = True  # a stray pixel widens the box
  masks[2, 2, 3] = True
  seg = segmenters.masks_to_boxes(masks)
  np.testing.assert_array_equal(seg.boxes, [[0, 1, 5, 5], [3, 2, 4, 3]])
  np.testing.assert_array_equal(seg.areas, [7, 1])


def test_felzenszwalb_boxes_enclose_drawn_shapes():
  canvas = Image.new("RGB", (128, 96), (130, 130, 130))
  draw = ImageDraw.Draw(canvas)
  shapes = {(10, 10, 50, 40): "rect", (70, 20, 118, 80): "ellipse", (15, 55, 55, 90): "polygon"}
  draw.rectangle((10, 10, 49, 39), fill=(220, 40, 40))
  draw.ellipse((70, 20, 117, 79), fill=(40, 60, 220))
  draw.polygon(((35, 55), (54, 89), (15, 89)), fill=(240, 220, 40))
  seg = segmenters.get_segmenter("felzenszwalb")(np.asarray(canvas), {})
  for box in shapes:
    best = max(seg.boxes, key=lambda b, box=box: _iou(box, b))
    assert _iou(box, best) > 0.9, (box, best)
  # The background region spans the image; no proposal is empty.
  assert [0, 0, 128, 96] in seg.boxes.tolist()
  assert np.all(seg.areas > 0) and np.all(seg.boxes[:, 2:] > seg.boxes[:, :2])


def test_felzenszwalb_finds_most_synthetic_shapes():
  """Textured shapes on noisy backgrounds: a box with IoU > 0.7 for at least 90 % of them."""
  seg = segmenters.get_segmenter("felzenszwalb")
  found = []
  for index in range(12):
    image, boxes = synthetic.render(synthetic.scene("train", index))
    proposals = seg(image, {}).boxes
    found += [max(_iou(g, b) for b in proposals) > 0.7 for g in boxes]
  assert np.mean(found) >= 0.9, np.mean(found)


def test_slic_regions_tile_the_image():
  image = synthetic.render(synthetic.scene("train", 0))[0]
  seg = segmenters.get_segmenter("slic", n_segments=16)(image, {})
  assert seg.areas.sum() == image.shape[0] * image.shape[1]
  assert 4 <= len(seg.boxes) <= 40
  assert seg.boxes[:, 0].min() == 0 and seg.boxes[:, 2].max() == image.shape[1]


def test_oracle_returns_the_record_boxes_in_original_pixels():
  record = {"pair_box": np.array([[1, 2, 30, 40], [5, 5, 9, 9]], np.float32)}
  seg = segmenters.get_segmenter("oracle")(np.zeros((8, 8, 3), np.uint8), record)
  np.testing.assert_array_equal(seg.boxes, record["pair_box"])
  assert seg.in_original and seg.areas is None


def test_registry_parses_typed_options_and_accepts_new_segmenters():
  assert {"felzenszwalb", "slic", "sam", "oracle"} <= set(segmenters.segmenter_names())
  options = segmenters.parse_options("felzenszwalb", "scale=250,min_size=30")
  assert options == {"scale": 250.0, "levels": 3, "sigma": 0.8, "min_size": 30,
                     "short_side": 256}
  assert isinstance(options["min_size"], int)
  with pytest.raises(ValueError, match="unknown field 'scael'"):
    segmenters.parse_options("felzenszwalb", "scael=3")
  with pytest.raises(ValueError, match="unknown segmenter 'nope'"):
    segmenters.get_segmenter("nope")

  def grid(cells: int = 2):
    def segment(image, record):
      del record
      h, w = image.shape[:2]
      return segmenters.Segmentation(np.array(
          [(x * w / cells, y * h / cells, (x + 1) * w / cells, (y + 1) * h / cells)
           for y in range(cells) for x in range(cells)], np.float32))
    return segment

  segmenters.register_segmenter("test_grid", grid)
  try:
    seg = segmenters.get_segmenter("test_grid", **segmenters.parse_options("test_grid",
                                                                           "cells=3"))
    assert seg(np.zeros((30, 60, 3), np.uint8), {}).boxes.tolist()[4] == [20, 10, 40, 20]
  finally:
    segmenters._REGISTRY.pop("test_grid")  # pylint: disable=protected-access


def test_sam_without_weights_fails_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match="model_dir=<a local SAM checkpoint folder>"):
    segmenters.get_segmenter("sam")
  with pytest.raises(FileNotFoundError, match="missing"):
    segmenters.get_segmenter("sam", model_dir=str(tmp_path / "missing"))


def test_sam_runs_the_mask_generation_pipeline_and_boxes_its_masks(tmp_path, monkeypatch):
  """The glue around `transformers.pipeline` (SAM weights and torchvision are not here)."""
  import sys  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
  transformers = types.ModuleType("transformers")
  monkeypatch.setitem(sys.modules, "transformers", transformers)
  calls = []

  def fake_pipeline(task, model, device):
    calls.append((task, model, device))

    def generate(image, points_per_batch):
      calls.append((image.size, points_per_batch))
      masks = np.zeros((2, image.size[1], image.size[0]), bool)
      masks[0, 2:5, 1:7] = True
      masks[1, 0:1, 0:2] = True
      return {"masks": list(masks), "scores": np.ones(2)}
    return generate

  transformers.pipeline = fake_pipeline
  segment = segmenters.get_segmenter("sam", model_dir=str(tmp_path), device="cuda")
  seg = segment(np.zeros((10, 12, 3), np.uint8), {})
  assert calls == [("mask-generation", str(tmp_path), "cuda"), ((12, 10), 128)]
  np.testing.assert_array_equal(seg.boxes, [[1, 2, 7, 5], [0, 0, 2, 1]])
  np.testing.assert_array_equal(seg.areas, [18, 2])
