"""`goal_jax.bench`: analytic FLOPs against hand counts and open_clip, batches, a CPU run."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _cli import run_command
from goal_jax import methods
from goal_jax.bench import __main__ as bench_command
from goal_jax.bench import batches, candidates, report, steps, timing
from goal_jax.data import pipeline
from goal_jax.models import clip, flops
from goal_jax.text import tokenizer
from goal_jax.training import loop

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


INPUT = pipeline.default_config()  # 77-token sentences, at most 8 of them


def _tiny(context=248):
  return clip.get_model_config("tiny/8", context_length=context)


def test_tiny_flops_by_hand():
  c = _tiny()
  # Vision: 17 tokens (CLS + 4x4 patches), width 64, 2 layers, MLP 256, embed 32, patch 8.
  #   matmuls   2 * 17 * 2 * (4*64*64 + 2*64*256) = 68 * 49152          = 3,342,336
  #   attention 2 layers * (2*17*17*64 for QK^T + 2*17*17*64 for AV)    =   147,968
  #   stem      2 * 16 patches * 192 inputs * 64                         =   393,216
  #   head      2 * 64 * 32                                              =     4,096
  assert flops.image_forward_flops(c) == 3_887_616
  # Text at 248 tokens: width 32, 2 layers, MLP 128, embed 32.
  #   matmuls   2 * 248 * 2 * (4*32*32 + 2*32*128) = 992 * 12288        = 12,189,696
  #   attention 2 * 4 * 248 * 248 * 32                                   = 15,745,024
  #   head      2 * 32 * 32                                              =      2,048
  assert flops.text_forward_flops(c, 248) == 27_936_768
  # Text at 77 tokens: 2*77*2*12288 + 8*77*77*32 + 2048 = 3,784,704 + 1,517,824 + 2,048.
  text77 = 5_304_576
  assert flops.text_forward_flops(c, 77) == text77
  per_pair = {
      "global": 3_887_616 + 27_936_768,
      "goal": 2 * (3_887_616 + 27_936_768) + 2 * 64 * 32 + 2 * 32 * 32,
      # + 9 short texts (summary, 8 sentences) + per-token heads on 17 patches and 248 tokens.
      "mulclip": 3_887_616 + 27_936_768 + 9 * text77 + 17 * 2 * 64 * 32 + 248 * 2 * 32 * 32,
      "longclip": 3_887_616 + 27_936_768 + text77,
      # + summary, 4 region captions and 4 x 10 hard negatives at 77 tokens, and the 16 patches
      # through the head (the map RoIAlign pools).
      "fgclip": 3_887_616 + 27_936_768 + 45 * text77 + 16 * 2 * 64 * 32,
  }
  for method, expected in per_pair.items():
    assert methods.get(method).forward_flops_per_pair(c, INPUT) == expected, method
    assert methods.get(method).train_flops_per_step(c, INPUT, 8) == 3 * 8 * expected, method


@pytest.mark.parametrize("variant, image_gflops, text77_gflops", [
    ("B/16", 35.13, 5.96), ("L/14", 162.03, 13.3)])
def test_flops_match_open_clip_profile(variant, image_gflops, text77_gflops):
  """open_clip's docs/model_profile.csv forward GFLOPs (https://github.com/mlfoundations/open_clip)."""
  c = clip.get_model_config(variant)
  np.testing.assert_allclose(flops.image_forward_flops(c) / 1e9, image_gflops, rtol=3e-3)
  np.testing.assert_allclose(flops.text_forward_flops(c, 77) / 1e9, text77_gflops, rtol=3e-3)


def _analyze(method, remat=""):
  """`--analyze_only` on a B/16-wide model with 2 layers per tower, batch 4 on 4 devices."""
  return steps.bench_method(method, "B/16", 4, steps=1, warmup=1, attention="xla",
                            dtype="bfloat16", remat=remat, time_it=False,
                            model_overrides=dict(vision_layers=2, text_layers=2))


@pytest.mark.parametrize("method", ["global", "goal", "mulclip", "longclip", "fgclip"])
def test_xla_counts_the_analytic_flops(method):
  """XLA's count of the lowered step equals the analytic one: the formula is right and no
  method runs a tower pass it does not need."""
  row = _analyze(method)
  assert row.step_s is None and row.counted_flops is not None
  assert 0.995 < row.counted_flops / row.train_flops < 1.01, row.counted_flops / row.train_flops


@pytest.mark.parametrize("method, candidate, most", [("mulclip", "packed_short_text", 0.8),
                                                     ("fgclip", "packed_region_text", 0.6),
                                                     ("goal", "short_local_text", 0.9)])
def test_xla_counts_the_analytic_flops_of_shorter_captions(method, candidate, most):
  """MulCLIP with its short captions packed in one 320-token row per pair (`text.packing`),
  FG-CLIP's in 12 rows of 128, GOAL with its local sentences at 77 tokens (`local_context`)."""
  row = steps.bench_method(method, "B/16", 4, steps=1, warmup=1, attention="xla",
                           dtype="bfloat16", time_it=False,
                           model_overrides=dict(vision_layers=2, text_layers=2),
                           candidate=candidates.BY_NAME[candidate])
  assert 0.995 < row.counted_flops / row.train_flops < 1.01, row.counted_flops / row.train_flops
  assert row.train_flops < most * _analyze(method).train_flops


def test_remat_trades_flops_for_saved_activations():
  """What `--remat` buys, read without running: `dots` recomputes only elementwise work and
  keeps less; `full` recomputes the blocks (XLA counts the extra forward) and keeps the least."""
  rows = {remat: _analyze("goal", remat) for remat in ("", "dots", "full")}
  saved = {remat: row.saved_bytes for remat, row in rows.items()}
  counted = {remat: row.counted_flops / row.train_flops for remat, row in rows.items()}
  assert saved[""] > 2 * saved["dots"] > 4 * saved["full"] > 0, saved
  assert counted[""] < counted["dots"] < 1.05 < 1.15 < counted["full"], counted
  # Every pair keeps at least its block inputs: 2 layers x (vision 197 x 768 + text 248 x 512)
  # in bf16, for the global and the local pair of GOAL.
  assert saved["full"] >= 4 * 2 * 2 * (197 * 768 + 248 * 512) * 2


def test_synthetic_batch_follows_the_batch_contract():
  c = _tiny()
  batch = batches.synthetic_batch(c, 4, sentence_context=77, max_sentences=3)
  s, g2, lc = c.image_size, c.grid_size ** 2, 248
  expected = {
      "image": ((4, s, s, 3), np.float32), "text": ((4, lc), np.int32),
      "summary": ((4, 77), np.int32), "sentences": ((4, 3, 77), np.int32),
      "sentence_valid": ((4, 3), bool), "span_mask": ((4, 3, lc), bool),
      "patch_mask": ((4, 3, g2), bool), "local_image": ((4, s, s, 3), np.float32),
      "local_text": ((4, lc), np.int32), "local_span_mask": ((4, lc), bool),
      "local_patch_mask": ((4, g2), bool), "local_valid": ((4,), bool),
      "region_box": ((4, 4, 4), np.float32), "region_text": ((4, 4, 77), np.int32),
      "region_valid": ((4, 4), bool), "region_negatives": ((4, 4, 10, 77), np.int32),
      "region_negative_valid": ((4, 4, 10), bool)}
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: (shape, np.dtype(dtype)) for k, (shape, dtype) in expected.items()}
  for ids in (batch["text"], batch["sentences"].reshape(-1, 77)):
    assert (ids[:, 0] == tokenizer.SOT_ID).all()
    assert ((ids == tokenizer.EOT_ID).sum(axis=1) == 1).all()  # one EOT, the row's largest id
    eot = ids.argmax(axis=1)
    assert (ids[np.arange(len(ids)), eot] == tokenizer.EOT_ID).all()
    assert all((row[e + 1:] == 0).all() and (row[1:e] > 0).all() for row, e in zip(ids, eot))
  assert batch["patch_mask"].any(axis=-1).all() and batch["local_span_mask"].any(axis=-1).all()
  boxes = batch["region_box"]
  assert ((0 <= boxes) & (boxes <= 1)).all() and (boxes[..., 2:] > boxes[..., :2]).all()
  assert batch["region_valid"][:, 0].all()  # every image has a region
  assert not (batch["region_negative_valid"] & ~batch["region_valid"][..., None]).any()


def _row(impl, method, batch, step_s, mfu=None):
  return timing.Row(impl, method, "B/16", batch, step_s=step_s, train_flops=1, mfu=mfu)


def test_target_checks():
  rows = [_row("goal_jax", "global", 256, 0.10, mfu=0.45), _row("goal_jax", "goal", 256, 0.20,
                                                                 mfu=0.39),
          _row("goal_jax", "mulclip", 256, 0.26, mfu=0.41),
          _row("hf_sdpa_compile", "global", 256, 0.11), _row("official_goal", "goal", 256, 1.2),
          _row("goal_jax", "goal", 16, 0.05), _row("official_goal", "goal", 16, 0.2),
          _row("goal_jax", "goal", 64, 0.06), _row("official_goal", "goal", 64, 0.5)]
  checks = sorted((c["target"], c["batch"], round(c["value"], 6), c["met"])
                  for c in report.target_checks(rows))
  # GOAL against the official step: 5x at batch 16, 8x at 64 (and at the nearest, 256).
  assert checks == sorted([("goal_vs_official", 256, 6.0, False),
                           ("goal_vs_official", 64, round(0.5 / 0.06, 6), True),
                           ("global_vs_hf_compile", 256, 1.1, False),
                           ("mulclip_vs_goal", 256, 1.3, False),
                           ("mfu_at_256", 256, 0.45, True), ("mfu_at_256", 256, 0.39, False),
                           ("mfu_at_256", 256, 0.41, True), ("goal_vs_official", 16, 4.0, False)])


def _check_result(result, method_names, batch, variant="tiny/8"):
  rows = {(r["impl"], r["method"]): r for r in result["rows"]}
  expected = {("goal_jax", m) for m in method_names} | {("hf_sdpa", "global"),
                                                   ("official_goal", "goal")}
  assert expected <= set(rows)
  c = _tiny()
  for (impl, method), r in rows.items():
    assert r["error"] is None, (impl, method, r["error"])
    assert (r["variant"], r["batch"]) == (variant, batch)
    assert r["train_flops"] == methods.get(method).train_flops_per_step(c, INPUT, batch)
    assert r["step_s"] > 0 and r["compile_s"] > 0
    np.testing.assert_allclose(r["pairs_per_s"], batch / r["step_s"])
    np.testing.assert_allclose(r["steps_per_s"], 1 / r["step_s"])
    assert r["mfu"] is None  # no known peak on CPU
    if impl == "goal_jax":  # elementwise ops weigh more in the tiny model than at B/16
      assert 1.0 < r["counted_flops"] / r["train_flops"] < 1.15, r
    else:
      assert r["counted_flops"] is None
  assert {c["target"] for c in result["targets"]} >= {"goal_vs_official"}


def test_cpu_run_with_reference(tmp_path, capsys):
  out = tmp_path / "bench.json"
  assert run_command(bench_command, "--variant=tiny/8", "--batch=8", "--steps=1", "--warmup=1",
                     "--methods=goal", "--reference", "--no_compile", f"--json_out={out}") == 0
  result = json.loads(out.read_text())
  _check_result(result, ("goal",), 8)
  printed = capsys.readouterr().out
  for text in ("official_goal", "hf_sdpa", "goal_vs_official", "target >= 5.0x", "XLA/ours",
               "global_vs_hf_compile      not measured", "mfu_at_256                not measured"):
    assert text in printed, text


def test_siglip_reference_is_siglipmodel_with_its_sigmoid_loss(tmp_path, capsys):
  """A SigLIP variant's PyTorch rows are transformers' SiglipModel trained with its own sigmoid
  loss, whose value on the same weights and batch equals ours."""
  import torch  # noqa: PLC0415
  from goal_jax.bench import torch_siglip  # noqa: PLC0415
  from goal_jax.losses import sigmoid  # noqa: PLC0415
  from goal_jax.models import siglip, siglip_weights  # noqa: PLC0415
  out = tmp_path / "bench.json"
  assert run_command(bench_command, "--variant=siglip-tiny/4", "--batch=8", "--steps=1",
                     "--warmup=1", "--methods=global", "--reference", "--no_compile",
                     f"--json_out={out}") == 0
  rows = json.loads(out.read_text())["rows"]
  assert [(r["impl"], r["method"]) for r in rows] == [("goal_jax", "global"),
                                                      ("hf_siglip_sdpa", "global")]
  assert all(r["step_s"] > 0 for r in rows)
  c = siglip.get_model_config("siglip-tiny/4")
  reference = torch_siglip.SiglipReference(c, 8)
  state = {k: v.detach().numpy() for k, v in reference.model.state_dict().items()}
  params = siglip_weights.from_hf_state_dict(state, c)
  model = siglip.SigLIP(c)
  images = reference.images.permute(0, 2, 3, 1).numpy()
  image = model.apply({"params": params}, images, method=siglip.SigLIP.encode_image)["embedding"]
  text = model.apply({"params": params}, reference.ids.numpy(),
                     method=siglip.SigLIP.encode_text)["embedding"]
  want = sigmoid.sigmoid_loss(image, text, params["logit_scale"], params["logit_bias"])
  with torch.no_grad():
    got = reference.loss(reference.images, reference.ids)
  np.testing.assert_allclose(float(got), float(want), rtol=2e-4)


@pytest.mark.slow
def test_ci_command(tmp_path):
  """The README's CI smoke command, as a subprocess (with torch.compile: minutes on 2 cores)."""
  out = tmp_path / "bench.json"
  proc = subprocess.run(
      [sys.executable, "-m", "goal_jax.bench", "--variant=tiny/8", "--batch=8", "--steps=2",
       "--reference", f"--json_out={out}"], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=1800, env={**os.environ, "XLA_FLAGS": ""})
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(out.read_text())
  _check_result(result, ("global", "goal", "mulclip"), 8)
  assert {c["target"] for c in result["targets"]} == {"goal_vs_official", "global_vs_hf_compile",
                                                      "mulclip_vs_goal"}


def test_the_bench_step_takes_the_trainers_uint8_pixels():
  """The recipes normalise on the device, so the trainer's batches hold uint8 images: the
  bench's step is lowered for those, not for float ones."""
  config = steps.method_config("goal", "tiny/8", 8, attention="xla", dtype="float32")
  c = loop.model_config_from(config, None)
  step = steps.make_train_step("goal", config, c, 8, extra_steps=1, materialise=False)
  dtypes = {k: v.dtype for k, v in step.abstract_batch().items()}
  assert dtypes["image"] == dtypes["local_image"] == np.uint8
  assert dtypes["text"] == np.int32
