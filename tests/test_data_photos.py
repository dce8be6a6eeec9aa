"""The `photos` fixture: real wheel photos, their captions and boxes, and the layouts it writes."""
import io

import numpy as np
import pytest
from PIL import Image

from goal_jax.data import builder, photos, prepare
from goal_jax.text import sentences as sentence_lib


def test_photos_are_real_files_with_licences_and_sane_boxes():
  assert len({p.name for p in photos.PHOTOS}) == len(photos.PHOTOS) >= 10
  for photo in photos.PHOTOS:
    with Image.open(photos.photo_path(photo)) as image:
      width, height = image.size
      assert image.mode in ("RGB", "RGBA", "P") and min(width, height) >= 256
    assert photo.licence and photo.summary
    texts = photos.sentences(photo.caption)
    assert len(texts) >= 5 and all(t.endswith(".") for t in texts)
    for index, (x1, y1, x2, y2) in photo.boxes:
      assert 0 <= index < len(texts)
      assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, (photo.name, index)


def test_plain_captions_split_the_same_with_the_real_splitter():
  for photo in photos.PHOTOS:
    spans = sentence_lib.split_sentences(photo.caption, "sentencex")
    assert [photo.caption[s:e].strip() for s, e in spans] == photos.sentences(photo.caption)


def test_fixture_images_and_boxes_are_scaled_together(tmp_path):
  entries = photos.write_raw_layout("goal_json", tmp_path, short_side=64)
  entry = next(e for e in entries if e.local_pairs)
  with Image.open(tmp_path / "photos" / f"{entry.photo.name}.jpg") as written:
    assert (written.height, written.width) == entry.size and min(entry.size) == 64
  full = photos.load_rgb(entry.photo)
  sx, sy = entry.size[1] / full.shape[1], entry.size[0] / full.shape[0]
  for pair, (_, box) in zip(entry.local_pairs, entry.photo.boxes):
    expected = [round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)]
    np.testing.assert_allclose(pair.box, expected)


def test_unknown_layout_is_refused(tmp_path):
  with pytest.raises(ValueError, match="unknown raw layout"):
    photos.write_raw_layout("laion", tmp_path)


def test_photos_dataset_end_to_end(tmp_path):
  summary = prepare.prepare("photos", tmp_path, image_short_side=64, verbose=False)
  assert summary["splits"]["test"]["written"] == len(photos.PHOTOS)
  source = builder.load_source("photos", "test", tmp_path)
  for index, photo in enumerate(photos.PHOTOS):
    record = builder.decode_record(source[index])
    full = photos.load_rgb(photo)
    assert tuple(record["original_size"]) == full.shape[:2]
    assert record["summary"] == photo.summary
    assert list(record["pair_sentence"]) == [i for i, _ in photo.boxes]
    np.testing.assert_allclose(record["pair_box"], [b for _, b in photo.boxes])
    stored = np.asarray(Image.open(io.BytesIO(record["image"])))
    assert min(stored.shape[:2]) == 64
    # The stored image is the photo, downscaled: compare with PIL's own resize of the original.
    reference = np.asarray(Image.fromarray(full).resize(stored.shape[1::-1],
                                                        Image.Resampling.BICUBIC), np.float32)
    assert np.abs(stored.astype(np.float32) - reference).mean() < 6.0
