"""FG-CLIP as a method: its loss is its objective worked out by hand from the towers' outputs
(CLIP: InfoNCE at three temperatures; SigLIP: the sigmoid, the region term with its own bias),
dense equals sharded on 4 devices, a 0 weight removes exactly its term and its inputs, the region
temperatures start at the backbone's, a split without hard negatives is refused with the command
that fixes it, and a few trainer steps lower the loss."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goal_jax import methods
from goal_jax import tree_paths
from goal_jax.bench import batches
from goal_jax.configs import fgclip as fgclip_recipe
from goal_jax.data import builder as data_builder
from goal_jax.methods import fgclip
from goal_jax.models import clip, families, roi_align, siglip
from goal_jax.training import loop
import test_methods
import test_methods_siglip
from test_losses_contrastive import make_mesh, shard_batch
from test_train import losses_of, prepare_synthetic

METHOD = methods.get("fgclip")
BATCH = 8
SHORT = 16  # the tests' summary and region context
TERMS = ("global_long", "global_short", "region", "hard_negative")
BACKBONES = {  # model config, tiny recipe, model class
    "clip": (test_methods.MODEL, test_methods.tiny_config, clip.CLIP),
    "siglip": (test_methods_siglip.MODEL, test_methods_siglip.tiny_config, siglip.SigLIP),
}


def setup(backbone, weights=None, seed=0):
  model_config, tiny_config, _ = BACKBONES[backbone]
  config = tiny_config("fgclip", [("weights", weights)] if weights else ())
  config.input.region_context = SHORT
  params = METHOD.init_params(config, model_config, jax.random.key(seed))
  # Own temperatures apart from the backbone's, so a term at the wrong one shows.
  params["fgclip"].update(logit_scale_region=np.float32(math.log(5.0)),
                          logit_scale_hard_negative=np.float32(math.log(3.0)))
  if "logit_bias_region" in params["fgclip"]:
    params["fgclip"]["logit_bias_region"] = np.float32(-2.0)
  batch = batches.synthetic_batch(model_config, BATCH, sentence_context=SHORT, max_sentences=3,
                                  seed=seed, max_regions=3, hard_negatives=4)
  return config, params, {k: jnp.asarray(v) for k, v in batch.items()}


def loss_of(backbone, config, params, batch, mesh=None):
  return METHOD.make_loss_fn(BACKBONES[backbone][0], config.loss, mesh)(params, batch)


# ------------------------------------------------------------------------------------------------
# By hand, in float64 numpy, from the towers run one input at a time.


def _log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def infonce(a, b, scale):
  logits = scale * a @ b.T
  return -(np.trace(_log_softmax(logits)) + np.trace(_log_softmax(logits.T))) / (2 * len(a))


def sigmoid_loss(a, b, scale, bias):
  labels = 2 * np.eye(len(a)) - 1
  return np.sum(np.logaddexp(0, -labels * (scale * a @ b.T + bias))) / len(a)


def hard_negative(region, positive, negatives, valid, negative_valid, scale):
  losses = []
  for i, r in np.argwhere(valid & negative_valid.any(-1)):
    texts = np.concatenate([positive[i, r][None], negatives[i, r][negative_valid[i, r]]])
    losses.append(-_log_softmax(scale * texts @ region[i, r])[0])
  return np.mean(losses)


def by_hand(backbone, params, batch):
  model_config, _, model_class = BACKBONES[backbone]
  apply = functools.partial(model_class(model_config).apply, {"params": params["clip"]})
  f64 = lambda x: np.asarray(x, np.float64)

  def encode(ids):  # one text tower call per kind, rows in their natural order
    out = apply(ids.reshape(-1, ids.shape[-1]), method=model_class.encode_text)["embedding"]
    return f64(out).reshape(*ids.shape[:-1], -1)

  image_out = apply(batch["image"], method=model_class.encode_image)
  # The projected patch map: CLIP's tokens after its class token, SigLIP's all (it has none).
  patches = image_out["tokens_projected"][:, 1:] if backbone == "clip" else (
      image_out["tokens_projected"])
  side = model_config.grid_size
  region = f64(roi_align.region_features(
      patches.reshape(BATCH, side, side, -1), batch["region_box"]))
  region /= np.linalg.norm(region, axis=-1, keepdims=True)
  image, own = f64(image_out["embedding"]), params["fgclip"]
  region_text = encode(batch["region_text"])
  valid = np.asarray(batch["region_valid"])
  scale = math.exp(float(params["clip"]["logit_scale"]))
  region_scale = math.exp(float(own["logit_scale_region"]))
  pair = infonce if backbone == "clip" else functools.partial(
      sigmoid_loss, bias=float(params["clip"]["logit_bias"]))
  region_pair = infonce if backbone == "clip" else functools.partial(
      sigmoid_loss, bias=float(own["logit_bias_region"]))
  return {
      "global_long": pair(image, encode(batch["text"]), scale),
      "global_short": pair(image, encode(batch["summary"]), scale),
      "region": region_pair(region[valid], region_text[valid], region_scale),
      "hard_negative": hard_negative(region, region_text, encode(batch["region_negatives"]),
                                     valid, np.asarray(batch["region_negative_valid"]),
                                     math.exp(float(own["logit_scale_hard_negative"]))),
  }


@pytest.mark.parametrize("backbone", ["clip", "siglip"])
def test_loss_is_its_objective_by_hand(backbone):
  config, params, batch = setup(backbone)
  loss, terms = jax.jit(functools.partial(loss_of, backbone, config))(params, batch)
  want = by_hand(backbone, params, batch)
  assert set(terms) == set(TERMS)
  for name in TERMS:
    np.testing.assert_allclose(terms[name], want[name], rtol=2e-5, err_msg=name)
  weights = fgclip.fgclip_loss.FGCLIP_WEIGHTS
  assert weights == {"global_long": 1.0, "global_short": 1.0, "region": 0.1,
                     "hard_negative": 0.5}
  np.testing.assert_allclose(loss, sum(weights[k] * want[k] for k in TERMS), rtol=2e-5)


@pytest.mark.parametrize("backbone", ["clip", "siglip"])
def test_dense_equals_sharded(backbone):
  """Value, terms and gradients on one device equal those on a 4-device mesh (the region term's
  rows gathered, or passed round the ring on SigLIP)."""
  config, params, batch = setup(backbone)
  grad = lambda mesh: jax.value_and_grad(
      METHOD.make_loss_fn(BACKBONES[backbone][0], config.loss, mesh), has_aux=True)
  (dense, terms), dense_grads = jax.jit(grad(None))(params, batch)
  mesh = make_mesh()
  with jax.set_mesh(mesh):
    (sharded, sharded_terms), sharded_grads = jax.jit(grad(mesh))(params, shard_batch(batch, mesh))
  np.testing.assert_allclose(sharded, dense, rtol=2e-5)
  for key in TERMS:
    np.testing.assert_allclose(sharded_terms[key], terms[key], rtol=2e-5, atol=1e-6, err_msg=key)
  for path, a, b in zip(tree_paths.leaf_names(dense_grads), jax.tree.leaves(sharded_grads),
                        jax.tree.leaves(dense_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5, err_msg=path)
  own = dense_grads["fgclip"]
  assert set(own) == ({"logit_scale_region", "logit_scale_hard_negative"}
                      | ({"logit_bias_region"} if backbone == "siglip" else set()))
  assert all(abs(float(g)) > 0 for g in own.values()), own  # each trained by its term


def test_zeroing_a_weight_removes_exactly_that_term():
  config, params, batch = setup("clip")
  _, terms = loss_of("clip", config, params, batch)
  for name in TERMS:
    weights = {**fgclip.fgclip_loss.FGCLIP_WEIGHTS, name: 0.0}
    ablated, _, _ = setup("clip", weights)
    loss, kept = loss_of("clip", ablated, params, batch)
    assert set(kept) == set(TERMS) - {name}
    for key in kept:
      np.testing.assert_allclose(kept[key], terms[key], rtol=1e-6, err_msg=(name, key))
    np.testing.assert_allclose(loss, sum(weights[k] * terms[k] for k in kept), rtol=1e-6)
  # What a term alone reads is not read without it: no hard term, no negatives; no region
  # term either, no region at all (the batch can lack the fields).
  no_hard, _, _ = setup("clip", {"hard_negative": 0.0})
  without = {k: v for k, v in batch.items() if k not in ("region_negatives",
                                                          "region_negative_valid")}
  assert set(loss_of("clip", no_hard, params, without)[1]) == {"global_long", "global_short",
                                                                "region"}
  global_only, _, _ = setup("clip", {"region": 0.0, "hard_negative": 0.0})
  without = {k: v for k, v in batch.items() if not k.startswith("region")}
  assert set(loss_of("clip", global_only, params, without)[1]) == {"global_long", "global_short"}


def test_short_texts_share_one_text_forward():
  """Summary, region captions and negatives of one length go through the tower once, each
  image's side by side; another length gets its own call."""
  calls = []

  def encode(ids):
    calls.append(ids.shape)
    return {"embedding": jnp.repeat(ids[:, :1].astype(jnp.float32), 2, axis=1)}

  ids = lambda *shape: jnp.arange(math.prod(shape)).reshape(shape)
  texts = {"summary": ids(2, 5), "region_text": ids(2, 3, 5) + 100,
           "region_negatives": ids(2, 3, 4, 5) + 1000, "long": ids(2, 7) + 5000}
  out = fgclip.encode_texts_together(encode, texts)
  assert calls == [(2 * (1 + 3 + 12), 5), (2, 7)]
  for name, value in texts.items():
    assert out[name].shape == value.shape[:-1] + (2,)
    np.testing.assert_array_equal(out[name][..., 0], value[..., 0])


@pytest.mark.parametrize("backbone", ["clip", "siglip"])
def test_own_temperatures_start_at_the_backbones(backbone):
  """As the release: `logit_scale_finegraind` and `logit_scale_hardneg` start at the pretrained
  CLIP's `logit_scale`; on SigLIP the region term's bias at its `logit_bias`."""
  model_config, tiny_config, _ = BACKBONES[backbone]
  config = tiny_config("fgclip")
  start = jax.device_get(families.of(model_config).init_params(model_config, jax.random.key(1)))
  start["logit_scale"] = np.float32(math.log(100.0))
  if backbone == "siglip":
    start["logit_bias"] = np.float32(-12.5)
  own = METHOD.init_params(config, model_config, jax.random.key(0), start)["fgclip"]
  np.testing.assert_allclose(own["logit_scale_region"], math.log(100.0), rtol=1e-6)
  np.testing.assert_allclose(own["logit_scale_hard_negative"], math.log(100.0), rtol=1e-6)
  assert ("logit_bias_region" in own) == (backbone == "siglip")
  if backbone == "siglip":
    np.testing.assert_allclose(own["logit_bias_region"], -12.5)
    softmax = tiny_config("fgclip", [("contrastive", "softmax")])  # no bias to learn then
    assert "logit_bias_region" not in METHOD.init_params(softmax, model_config,
                                                         jax.random.key(0), start)["fgclip"]
  # The restore target of a model's method params has the same shapes.
  assert jax.tree.map(np.shape, own) == jax.tree.map(
      lambda x: x.shape, METHOD.abstract_extra_params(config.loss, model_config)["fgclip"])


def test_recipe_decays_as_the_hf_trainer():
  """Weight decay on every param but biases (any name with "bias") and LayerNorm params."""
  params = METHOD.init_params(test_methods_siglip.tiny_config("fgclip"),
                              test_methods_siglip.MODEL, jax.random.key(0))
  params = {**params, "clip_b": clip.init_params(test_methods.MODEL, jax.random.key(0))}
  decayed = tree_paths.match_rules(params, [(fgclip_recipe.DECAY_REGEX, True)], what="decay",
                                   default=False)
  names = dict(zip(tree_paths.leaf_names(params), jax.tree.leaves(decayed)))
  for name in ("clip/logit_scale", "fgclip/logit_scale_region", "clip_b/visual/proj",
               "clip_b/visual/conv1/kernel", "clip_b/text/positional_embedding",
               "clip_b/visual/transformer/resblocks_0/attn/query/kernel"):
    assert names[name], name
  for name in ("clip/logit_bias", "fgclip/logit_bias_region", "clip_b/visual/ln_post/scale",
               "clip_b/visual/ln_post/bias",
               "clip_b/visual/transformer/resblocks_0/attn/query/bias"):
    assert not names[name], name


def test_step_metrics_are_the_region_shares():
  _, _, batch = setup("clip")
  metrics = METHOD.step_metrics(batch)
  valid = np.asarray(batch["region_valid"])
  with_negatives = valid & np.asarray(batch["region_negative_valid"]).any(-1)
  np.testing.assert_allclose(metrics["region_share"], valid.mean())
  np.testing.assert_allclose(metrics["hard_negative_share"], with_negatives.mean())


# ------------------------------------------------------------------------------------------------
# On prepared data, through the trainer.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """`synthetic` with one batch of training records (hard negatives in `train` only)."""
  return prepare_synthetic(str(tmp_path_factory.mktemp("tfds")), BATCH)


def train_config(data_dir, split="train", steps=6, weights=None):
  config = test_methods.tiny_config("fgclip", [("weights", weights)] if weights else (),
                                    dataset="synthetic", data_dir=data_dir, steps=steps)
  config.input.update(split=split, region_context=SHORT, sentence_context=SHORT)
  config.log_every, config.checkpoint_every = 1, 1000
  config.progress_bar = config.tensorboard = False
  config.evals.benchmarks = ""
  return config


def test_refuses_a_split_without_hard_negatives(data_dir, tmp_path):
  source = data_builder.load_source("synthetic", "train", data_dir)
  METHOD.check_data(train_config(data_dir), source)  # the generator's train split has them
  # The same shards as prepared before the field existed: the command to prepare them again.
  old = [{k: v for k, v in source[i].items() if not k.startswith("pair_hard_negative")}
         for i in range(len(source))]
  with pytest.raises(ValueError, match=r"(?s)no hard negatives.*python -m goal_jax.prepare "
                     f"--dataset=synthetic --data_dir={data_dir}"):
    METHOD.check_data(train_config(data_dir), old)
  METHOD.check_data(train_config(data_dir, weights={"hard_negative": 0.0}), old)
  # Through the trainer: the test split has regions but no negatives; refused before compiling.
  with pytest.raises(loop.SetupError, match="no hard negatives"):
    loop.run(train_config(data_dir, split="test"), str(tmp_path / "refused"))


def test_a_few_steps_lower_the_loss(data_dir, tmp_path):
  out = loop.run(train_config(data_dir), str(tmp_path))
  losses = losses_of(str(tmp_path))
  assert out["step"] == 6 and len(losses) == 6 and all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.05, losses
  metrics = out["metrics"]
  assert 0 < metrics["hard_negative_share"] <= metrics["region_share"] <= 1, metrics
  assert {f"loss/{name}" for name in TERMS} <= set(metrics)


def test_the_demo_prepares_a_cache_from_before_hard_negatives_again(data_dir, monkeypatch):
  from goal_jax import demo  # noqa: PLC0415
  prepared = []
  monkeypatch.setattr(demo.data_prepare, "prepare", lambda *a, **k: prepared.append(a))
  demo.ensure_synthetic(data_dir)
  assert not prepared  # the cache has them: kept
  load = data_builder.load_source

  def without_negatives(name, split, root):
    source = load(name, split, root)
    return [{k: v for k, v in source[i].items() if not k.startswith("pair_hard_negative")}
            for i in range(len(source))]

  monkeypatch.setattr(demo.data_builder, "load_source", without_negatives)
  demo.ensure_synthetic(data_dir)
  assert prepared == [("synthetic", data_dir)]
