"""`bench --candidates`: the step compiled or computed another way, beside the step as built."""
import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from _cli import run_command
from goal_jax.bench import __main__ as bench_command
from goal_jax.bench import candidates, report, steps
from goal_jax.bench.timing import Row
from goal_jax.models import clip, families, siglip, towers


def test_parse_names_all_and_unknown():
  assert [c.name for c in candidates.parse(["all"])] == [
      c.name for c in candidates.CANDIDATES + candidates.BEFORE]
  assert [c.name for c in candidates.parse(["cudnn_layer_norm", "triton_gemm_any",
                                            "cudnn_layer_norm"])] == ["cudnn_layer_norm",
                                                                      "triton_gemm_any"]
  with pytest.raises(ValueError, match=r"unknown \['fast'\]; known: .*centered_variance"):
    candidates.parse(["fast", "centered_variance"])
  # Every model field a candidate sets is a field of both families' configs (the BEFORE rows'
  # of the family whose step changed).
  for c in candidates.CANDIDATES:
    for family_config in (clip.get_model_config("tiny/8"),
                          siglip.get_model_config("siglip-tiny/4")):
      dataclasses.replace(family_config, **c.model_overrides)


@pytest.mark.parametrize("fast_variance", [True, False])
def test_layer_norm_either_variance_is_the_textbook_one(fast_variance):
  """Both forms against a float64 layer norm written out (the centred form is what XLA's cuDNN
  rewrite matches; the one-pass form is Flax's default)."""
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(3, 5, 64)) * 4 + 30).astype(np.float32)  # an offset the one pass feels
  scale, bias = rng.normal(size=64).astype(np.float32), rng.normal(size=64).astype(np.float32)
  config = dataclasses.replace(clip.get_model_config("tiny/8"),
                               layer_norm_fast_variance=fast_variance)
  norm = towers.layer_norm(config, np.float32)
  got = norm.apply({"params": {"scale": scale, "bias": bias}}, x)
  x64 = x.astype(np.float64)
  mean = x64.mean(-1, keepdims=True)
  want = (x64 - mean) / np.sqrt(((x64 - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * scale + bias
  np.testing.assert_allclose(got, want, atol=2e-4 if fast_variance else 2e-5)
  assert isinstance(norm, nn.LayerNorm) and norm.use_fast_variance is fast_variance


@pytest.mark.parametrize("variant", ["tiny/8", "siglip-tiny/4"])
def test_centered_variance_keeps_the_params_and_the_embeddings(variant):
  c = families.get_variant(variant)
  family = families.of(c)
  params = family.init_params(c, jax.random.key(0))
  centred = dataclasses.replace(c, layer_norm_fast_variance=False)
  assert jax.tree.structure(family.init_params(centred, jax.random.key(0))) == \
      jax.tree.structure(params)
  rng = np.random.default_rng(1)
  images = rng.normal(size=(2, c.image_size, c.image_size, 3)).astype(np.float32)
  ids = rng.integers(1, 200, size=(2, c.context_length)).astype(np.int32)
  outs = [family.model_class(config).apply({"params": params}, images, ids)
          for config in (c, centred)]
  for a, b in zip(*map(jax.tree.leaves, outs), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _row(method, candidate=None):
  return steps.bench_method(method, "tiny/8", 8, steps=1, warmup=1, attention="xla",
                            dtype="float32", candidate=candidate)


def test_a_candidate_is_a_row_of_its_own_on_the_same_params_and_batch():
  built = _row("global")
  gpu_only = _row("global", candidates.BY_NAME["cudnn_gemm_fusion"])  # no effect on a CPU
  centred = _row("global", candidates.BY_NAME["centered_variance"])
  assert (built.impl, gpu_only.impl, centred.impl) == (
      "goal_jax", "goal_jax+cudnn_gemm_fusion", "goal_jax+centered_variance")
  assert gpu_only.first_loss == built.first_loss  # the same program on a CPU
  assert centred.counted_flops != built.counted_flops  # another program (x - E[x] twice) ...
  np.testing.assert_allclose(centred.first_loss, built.first_loss, rtol=1e-5)  # ... same loss
  # The options reach XLA: one it does not know is the row's error, not the run's.
  unknown = candidates.Candidate("unknown", "a test", compiler_options={"xla_no_such_flag": 1})
  failed = _row("global", unknown)
  assert failed.step_s is None and "No such compile option" in failed.error


def test_a_candidate_for_another_family_is_a_row_that_says_so():
  row = steps.bench_method("global", "siglip-tiny/4", 8, steps=1, warmup=1, attention="xla",
                           dtype="float32", candidate=candidates.BY_NAME["eot_gather"])
  assert row.step_s is None and row.error == "not for this model: SigLIPConfig has no eot_pooling"


def test_targets_never_read_a_candidates_time():
  official = Row("official_goal", "goal", "B/16", 64, step_s=0.8)
  built = Row("goal_jax", "goal", "B/16", 64, step_s=0.2, first_loss=5.0)
  faster = Row("goal_jax+triton_gemm_any", "goal", "B/16", 64, step_s=0.1, first_loss=5.0005)
  (check,) = report.target_checks([official, faster, built])
  assert (check["target"], check["value"]) == ("goal_vs_official", 4.0)
  assert report.target_checks([official, faster]) == []
  table = report.format_candidates([official, built, faster],
                                   [candidates.BY_NAME["triton_gemm_any"]])
  line = next(l for l in table.splitlines() if l.startswith("triton_gemm_any"))
  assert line.split()[4:9] == ["200.00", "100.00", "2.000", "5.000000", "5.000500"]
  assert "1.0e-04" in line
  assert "xla_gpu_triton_gemm_any=True" in table


def test_bench_command_with_candidates(tmp_path, capsys):
  out = tmp_path / "bench.json"
  assert run_command(bench_command, "--variant=tiny/8", "--batch=8", "--steps=1", "--warmup=1",
                     "--methods=goal", "--candidates=cudnn_layer_norm",
                     f"--json_out={out}") == 0
  result = json.loads(out.read_text())
  assert [r["impl"] for r in result["rows"]] == ["goal_jax", "goal_jax+cudnn_layer_norm"]
  assert result["candidates"][0]["compiler_options"] == {"xla_gpu_enable_cudnn_layer_norm": True}
  np.testing.assert_allclose(result["rows"][1]["first_loss"], result["rows"][0]["first_loss"],
                             rtol=1e-5)
  assert "candidates against the step as built" in capsys.readouterr().out
  assert run_command(bench_command, "--candidates=fastest") == 2
  assert "unknown ['fastest']; known:" in capsys.readouterr().err
  assert run_command(bench_command, "--candidates=all", "--analyze_only") == 2
