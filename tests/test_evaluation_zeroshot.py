"""Zero-shot data files, classifier weights, classification and the ImageFolder loader."""
import os

import jax
import numpy as np
import pytest

from goal_jax.evaluation import zeroshot


# --- Shipped data. ----------------------------------------------------------------------------


def test_class_name_lists_have_the_dataset_sizes():
  sizes = {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "imagenet_v2": 1000,
           "imagenet_o": 200}
  for name, size in sizes.items():
    names = zeroshot.load_class_names(name)
    assert len(names) == size, name
    assert all(n == n.strip() and n for n in names), name
  assert zeroshot.load_class_names("imagenet_v2") == zeroshot.load_class_names("imagenet")
  assert zeroshot.load_class_names("cifar10")[:3] == ("airplane", "automobile", "bird")
  assert zeroshot.load_class_names("imagenet")[:2] == ("tench", "goldfish")


def test_cifar100_names_are_the_sorted_dataset_labels():
  names = zeroshot.load_class_names("cifar100")
  raw = [n.replace(" ", "_") for n in names]
  assert raw == sorted(raw) and len(set(raw)) == 100  # The dataset's meta file is alphabetical.
  assert names[1] == "aquarium fish" and names[-1] == "worm"


def test_imagenet_o_maps_to_imagenet_indices():
  wnids = zeroshot.imagenet_wnids()
  assert len(wnids) == 1000 and list(wnids) == sorted(wnids) and wnids[0] == "n01440764"
  indices = zeroshot.imagenet_o_class_indices()
  assert len(indices) == 200 and list(indices) == sorted(set(indices))
  assert wnids[indices[0]] == "n01443537"  # ImageNet-O's first class, goldfish (ImageNet 1).
  names = zeroshot.load_class_names("imagenet_o")
  assert names[0] == "goldfish" == zeroshot.load_class_names("imagenet")[1]


def test_templates_and_zeroshot_sets():
  assert len(zeroshot.load_templates("openai_imagenet")) == 80
  assert len(zeroshot.load_templates("simple_imagenet")) == 7
  assert len(zeroshot.load_templates("openai_cifar")) == 18
  assert zeroshot.load_templates("openai_cifar")[0] == "a photo of a {c}."
  for benchmark in zeroshot.ZEROSHOT_SETS:
    names, prompts = zeroshot.zeroshot_set(benchmark)
    assert names and all("{c}" in t for t in prompts), benchmark
  with pytest.raises(ValueError, match="unknown zero-shot benchmark"):
    zeroshot.zeroshot_set("mnist")


# --- Classifier from a fake text encoder whose answer is known. --------------------------------

CLASSES = ("cat", "dog", "car")
TEMPLATES = ("a photo of a {c}.", "a drawing of the {c}.", "{c}!", "a big {c}.", "my {c}")
DIM = 6


def anchors():
  """Class c's prompts land near e_c (unit vectors chosen by the test)."""
  return np.eye(DIM, dtype=np.float32)[:len(CLASSES)]


def template_offset(t):
  return 0.3 * np.sin(np.arange(DIM) * (t + 1)).astype(np.float32)


def fake_tokenize(prompts):
  ids = np.zeros((len(prompts), 4), np.int32)
  for row, prompt in enumerate(prompts):
    c = next(i for i, name in enumerate(CLASSES) if name in prompt)
    t = next(i for i, tmpl in enumerate(TEMPLATES) if tmpl.format(c=CLASSES[c]) == prompt)
    ids[row, :2] = c + 1, t + 1
  return ids


def make_fake_encoder(batch_size, as_dict):
  calls = []

  def encode(ids):
    assert ids.shape == (batch_size, 4)  # Fixed shape: the last batch arrives zero-padded.
    calls.append(ids.copy())
    out = np.zeros((len(ids), DIM), np.float32)
    for row, (c, t) in enumerate(ids[:, :2]):
      if c:
        out[row] = 2.0 * anchors()[c - 1] + template_offset(t - 1)  # Not unit norm on purpose.
      else:
        out[row] = 1e3  # Padding rows must be dropped, or they would swamp the means.
    return {"embedding": out} if as_dict else out

  return encode, calls


@pytest.mark.parametrize("as_dict", [False, True])
def test_classifier_is_normalised_mean_of_normalised_prompts(as_dict):
  encode, calls = make_fake_encoder(batch_size=4, as_dict=as_dict)
  weights = zeroshot.build_zeroshot_classifier(CLASSES, TEMPLATES, encode, fake_tokenize,
                                               batch_size=4)
  assert len(calls) == 4  # 15 prompts in batches of 4.
  expected = []
  for c in range(len(CLASSES)):
    prompts = [2.0 * anchors()[c] + template_offset(t) for t in range(len(TEMPLATES))]
    mean = np.mean([p / np.linalg.norm(p) for p in prompts], axis=0)
    expected.append(mean / np.linalg.norm(mean))
  np.testing.assert_allclose(weights, np.array(expected), rtol=1e-5, atol=1e-6)


def test_classify_returns_known_top1_and_accuracy():
  encode, _ = make_fake_encoder(batch_size=8, as_dict=False)
  weights = zeroshot.build_zeroshot_classifier(CLASSES, TEMPLATES, encode, fake_tokenize,
                                               batch_size=8)
  rng = np.random.default_rng(0)
  truth = np.array([0, 1, 2, 2, 1, 0, 0, 2])
  images = anchors()[truth] + 0.05 * rng.normal(size=(8, DIM)).astype(np.float32)
  labels = truth.copy()
  labels[[1, 6]] = [2, 1]  # Two wrong labels: top-1 accuracy 6/8.
  out = zeroshot.classify(images, weights, labels, ks=(1, 2, 3), block_size=3)
  np.testing.assert_array_equal(out["predictions"][:, 0], truth)
  expected_order = np.argsort(-(images @ weights.T), axis=1, kind="stable")
  np.testing.assert_array_equal(out["predictions"], expected_order)
  assert out["top1"] == pytest.approx(75.0)
  top2_hits = [labels[i] in expected_order[i, :2] for i in range(8)]
  assert out["top2"] == pytest.approx(100.0 * np.mean(top2_hits))
  assert out["top3"] == 100.0


def test_classify_breaks_ties_towards_lower_class_index():
  weights = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
  out = zeroshot.classify(np.array([[1.0, 0.0]], np.float32), weights, [1], ks=(1, 2))
  assert out["predictions"].tolist() == [[0, 1]]
  assert out["top1"] == 0.0 and out["top2"] == 100.0


def test_classifier_and_classify_under_a_disallowing_transfer_guard():
  """A jitted encoder's device outputs are fetched explicitly; scoring copies explicitly."""
  encode, _ = make_fake_encoder(batch_size=4, as_dict=False)
  expected = zeroshot.build_zeroshot_classifier(CLASSES, TEMPLATES, encode, fake_tokenize,
                                                batch_size=4)
  on_device = jax.jit(lambda x: x)
  device_encode = lambda ids: on_device(jax.device_put(encode(ids)))
  images = anchors()[[2, 0, 1]] + 0.1
  with jax.transfer_guard("disallow"):
    weights = zeroshot.build_zeroshot_classifier(CLASSES, TEMPLATES, device_encode,
                                                 fake_tokenize, batch_size=4)
    out = zeroshot.classify(images, weights, [2, 1, 1], ks=(1, 3), block_size=2)
  np.testing.assert_allclose(weights, expected, rtol=1e-6)
  np.testing.assert_array_equal(out["predictions"],
                                np.argsort(-(images @ expected.T), axis=1, kind="stable"))
  assert out["predictions"][:, 0].tolist() == [2, 0, 1]
  assert out["top1"] == pytest.approx(200 / 3) and out["top3"] == 100.0


def test_classifier_input_errors():
  encode, _ = make_fake_encoder(batch_size=4, as_dict=False)
  with pytest.raises(ValueError, match="has no '\\{c\\}' field"):
    zeroshot.build_zeroshot_classifier(CLASSES, ["a photo"], encode, fake_tokenize, batch_size=4)
  with pytest.raises(ValueError, match="label of image 0 is 5"):
    zeroshot.classify(np.ones((1, 2), np.float32), np.eye(2, dtype=np.float32), [5])


# --- ImageFolder loader. -----------------------------------------------------------------------


def make_folder(root, layout):
  for cls, files in layout.items():
    os.makedirs(os.path.join(root, cls), exist_ok=True)
    for f in files:
      with open(os.path.join(root, cls, f), "wb") as fh:
        fh.write(b"x")


def test_image_folder_sorted_names_and_labels(tmp_path):
  make_folder(tmp_path, {"zebra": ["b.JPG", "a.png", "notes.txt"], "ant": ["1.jpeg"]})
  paths, labels, classes = zeroshot.load_image_folder(str(tmp_path))
  assert classes == ["ant", "zebra"]
  assert [os.path.relpath(p, tmp_path) for p in paths] == ["ant/1.jpeg", "zebra/a.png",
                                                           "zebra/b.JPG"]
  assert labels.tolist() == [0, 1, 1] and labels.dtype == np.int32


def test_image_folder_numeric_names_sort_as_integers(tmp_path):
  make_folder(tmp_path, {"10": ["x.jpg"], "2": ["y.jpg"], "0": ["z.jpg"]})  # ImageNet-V2 style.
  paths, labels, classes = zeroshot.load_image_folder(str(tmp_path))
  assert classes == ["0", "2", "10"]
  assert [os.path.basename(p) for p in paths] == ["z.jpg", "y.jpg", "x.jpg"]
  assert labels.tolist() == [0, 1, 2]


def test_image_folder_errors(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    zeroshot.load_image_folder(str(tmp_path / "missing"))
  make_folder(tmp_path, {"a": ["1.jpg"], "b": ["readme.md"]})
  with pytest.raises(ValueError, match="holds no image"):
    zeroshot.load_image_folder(str(tmp_path))
  with pytest.raises(ValueError, match=r"missing \['c'\], unexpected \['b'\]"):
    zeroshot.load_image_folder(str(tmp_path), classes=["a", "c"])


def test_zeroshot_folder_classes_by_number_and_wnid(tmp_path):
  for i in (0, 1, 2, 10):
    (tmp_path / "n" / str(i)).mkdir(parents=True)
  assert zeroshot.folder_classes(str(tmp_path / "n"), "cifar10") is None  # numeric order
  wnids = zeroshot.imagenet_wnids()
  for wnid in wnids[:3]:
    (tmp_path / "w" / wnid).mkdir(parents=True)
  assert zeroshot.folder_classes(str(tmp_path / "w"), "imagenet") == list(wnids)
  (tmp_path / "bad" / "kitten").mkdir(parents=True)
  with pytest.raises(ValueError, match="neither label numbers nor the cifar10 class names"):
    zeroshot.folder_classes(str(tmp_path / "bad"), "cifar10")
