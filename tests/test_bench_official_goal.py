"""`bench.official_goal`: GOAL's released loop run from a checkout named at run time.

CI has no checkout (nothing of the release is in this repository), so a stand-in with the
release's file layout and loop shape checks the machinery: what is read, what Fabric's calls
become, the timing, and that the loop's prints and its epoch's save go nowhere. With
`GOAL_OFFICIAL_REPO` naming a clone of https://github.com/PerceptualAI-Lab/GOAL, the released
loop's first loss equals the bench's rebuilt official step on the same weights and batch.
"""
import os
import pathlib
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from _cli import run_command  # noqa: E402
from goal_jax.bench import __main__ as bench_command  # noqa: E402
from goal_jax.bench import official_goal, torch_reference  # noqa: E402
from goal_jax.models import clip  # noqa: E402

# The release's loop shape: `args` global, Fabric's all_gather/backward/print/barrier, the
# per-step `.item()`, a save after the epoch. Its loss is the global InfoNCE over batch_align'd
# embeddings, so the test has an independent value for it.
STAND_IN = '''
import torch
import wandb
torch.autograd.set_detect_anomaly(True)

def clip_loss(sim):
    gt = torch.arange(len(sim), dtype=torch.long, device=sim.device)
    return (torch.nn.CrossEntropyLoss()(sim, gt) + torch.nn.CrossEntropyLoss()(sim.t(), gt)) / 2.0

def get_patch_tokens_from_bbox(patch_tokens, bbox, b, org_size, image_size=224, patch_size=16):
    return patch_tokens.mean(1)

def get_text_tokens_from_segment(text_tokens, org_text, seg_text, processor):
    return text_tokens.mean(1)

def train(fabric, model, optimizer, train_loader, processor):
    for epoch in range(args.epochs):
        for i, samples in enumerate(train_loader):
            org_image, org_text, seg_image, seg_text, bbox, org_caption, seg_caption = samples
            assert torch.is_anomaly_enabled()
            assert processor(text=org_caption[0]).input_ids[0] == 49406
            outputs = model(pixel_values=org_image, input_ids=org_text)
            x_i = batch_align(fabric, F.normalize(outputs.image_embeds))
            x_t = batch_align(fabric, F.normalize(outputs.text_embeds))
            loss = clip_loss(model.logit_scale.exp() * x_i @ x_t.t())
            print("a line per sample", bbox["width"][0].item())
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            fabric.print(f"iter {i} loss {loss.item():.4f}")
        fabric.barrier()
        torch.save(model.state_dict(), os.path.join(args.output_dir, "epoch.pth"))
'''
STAND_IN_FUNC = '''
def batch_align(fabric, x):
    x = fabric.all_gather(x, sync_grads=True)
    return x.view(x.shape[0]*x.shape[1], -1)
'''


def _checkout(root: pathlib.Path, release: str = STAND_IN) -> pathlib.Path:
  (root / "utils").mkdir(parents=True)
  (root / official_goal.RELEASED_FILE).write_text(textwrap.dedent(release))
  (root / "utils" / "func.py").write_text(STAND_IN_FUNC)
  return root


def test_the_stand_in_loop_runs_as_on_one_gpu(tmp_path, capsys):
  released = official_goal.load(str(_checkout(tmp_path / "GOAL")))
  assert released.detect_anomaly
  reference = torch_reference.TorchReference(clip.get_model_config("tiny/8", context_length=77), 4)
  with torch.no_grad():
    want = float(reference.global_loss(reference.images, reference.ids))
  timing = official_goal.time_released(released, reference, steps=2, warmup=1)
  assert len(timing.losses) == 3 and timing.step_s > 0 and timing.first_s > 0
  np.testing.assert_allclose(timing.losses[0], want, rtol=1e-6)  # before any update
  assert timing.losses[1] != timing.losses[0]  # the optimizer stepped
  assert not torch.is_anomaly_enabled()  # the release's mode ends with its loop
  assert capsys.readouterr().out == ""  # its prints went to /dev/null


def test_a_wrong_checkout_is_one_line_naming_what_is_missing(tmp_path):
  with pytest.raises(ValueError, match=r"^--goal_repo=\S+: no goal_loss_finetuning.py there; "
                     r"clone https://github.com/PerceptualAI-Lab/GOAL"):
    official_goal.load(str(tmp_path))
  root = _checkout(tmp_path / "GOAL", STAND_IN.replace("def train(", "def fit("))
  with pytest.raises(ValueError, match=r"goal_loss_finetuning.py has no train; this is not the "
                     "release"):
    official_goal.load(str(root))


def test_the_bench_row_and_its_ratio(tmp_path, capsys):
  out = tmp_path / "bench.json"
  repo = _checkout(tmp_path / "GOAL")
  assert run_command(bench_command, "--variant=tiny/8", "--batch=4", "--steps=1", "--warmup=1",
                     "--methods=goal", "--reference", "--no_compile", f"--goal_repo={repo}",
                     f"--json_out={out}") == 0
  import json  # noqa: PLC0415
  result = json.loads(out.read_text())
  released = [r for r in result["rows"] if r["impl"] == "official_goal_released"]
  assert len(released) == 1 and released[0]["step_s"] > 0
  ours = next(r for r in result["rows"] if r["impl"] == "goal_jax")
  check = next(c for c in result["targets"] if c["target"] == "goal_vs_official_released")
  np.testing.assert_allclose(check["value"], released[0]["step_s"] / ours["step_s"])
  assert "goal_vs_official_released" in capsys.readouterr().out
  assert run_command(bench_command, "--variant=tiny/8", f"--goal_repo={repo}") == 2


@pytest.fixture
def release():
  repo = os.environ.get("GOAL_OFFICIAL_REPO")
  if not repo or not (pathlib.Path(repo) / official_goal.RELEASED_FILE).is_file():
    pytest.skip("set GOAL_OFFICIAL_REPO to a clone of github.com/PerceptualAI-Lab/GOAL")
  return official_goal.load(repo)


def test_the_released_loop_equals_the_rebuilt_step(release):
  """The released loop's first loss (global + ½ local InfoNCE + both TSL terms) equals the
  bench's rebuild on the same weights and batch. The release hard-codes 16-pixel patches, so the
  tiny model here has them (a 4 x 4 grid at 64 pixels)."""
  assert release.detect_anomaly  # as released: the module turns it on at import
  c = clip.get_model_config("tiny/8", context_length=248, image_size=64, patch_size=16)
  reference = torch_reference.TorchReference(c, 4)
  with torch.no_grad():
    want = float(reference.official_goal_loss())
  timing = official_goal.time_released(release, reference, steps=1, warmup=0)
  np.testing.assert_allclose(timing.losses[0], want, rtol=1e-5)
