"""GOAL's released training loop, timed as released (`bench --reference --goal_repo=<checkout>`).

The bench's `official_goal` row is a rebuild: the official step's tensor work
(`torch_reference.TorchReference.official_goal_loss`). This row runs the release itself: the
`train` function of `goal_loss_finetuning.py` and its helpers (`clip_loss`,
`get_patch_tokens_from_bbox`, `get_text_tokens_from_segment`, and `batch_align` from
`utils/func.py`) are read from a checkout of https://github.com/PerceptualAI-Lab/GOAL at run time
and compiled alone, so nothing of it is part of this project and its imports (Lightning,
DeepSpeed, wandb) are not needed. What the release's module does at import and its loop depends
on is supplied as on one GPU:

- Lightning Fabric (`precision="bf16"`, `strategy="ddp"`, one device) becomes bf16 autocast, and
  an `all_gather` that stacks like DDP's (`(1, B, D)`; `batch_align` flattens it back);
- the module's `torch.autograd.set_detect_anomaly(True)` is kept when the file has it: the
  released loop runs under it;
- its per-sample prints and `print(num_patches)` go to /dev/null, wandb's logging nowhere, and
  the epoch's `torch.save` of the model is skipped (it is after the timed steps anyway).

The loop reads one batch per step from a loader that timestamps each request: the release calls
`loss.item()` every step, so the interval between two requests is one whole step on the device.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import math
import os
import pathlib
import tempfile
import time
import types
from collections.abc import Callable
from typing import Any

RELEASED_FILE = "goal_loss_finetuning.py"
FUNCTIONS = {RELEASED_FILE: ("clip_loss", "get_patch_tokens_from_bbox",
                             "get_text_tokens_from_segment", "train"),
             "utils/func.py": ("batch_align",)}
REPOSITORY = "https://github.com/PerceptualAI-Lab/GOAL"


@dataclasses.dataclass
class Released:
  """The release's loop and what its module sets at import."""
  train: Callable[..., None]
  detect_anomaly: bool
  namespace: dict[str, Any]


def load(repo: str) -> Released:
  """The released functions, compiled from the checkout's files into one namespace.

  Raises:
    ValueError: one line, when `repo` lacks a file or one of the functions.
  """
  import torch  # pylint: disable=g-import-not-at-top

  root = pathlib.Path(repo).expanduser()
  namespace = {"torch": _TorchWithoutSave(torch), "F": torch.nn.functional, "math": math,
               "os": os, "wandb": types.SimpleNamespace(log=lambda *a, **k: None)}
  detect_anomaly = False
  for name, wanted in FUNCTIONS.items():
    path = root / name
    if not path.is_file():
      raise ValueError(f"--goal_repo={repo}: no {name} there; clone {REPOSITORY} (the release "
                       f"whose {RELEASED_FILE} holds the training loop) and name that folder")
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    body = [node for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name in wanted]
    missing = sorted(set(wanted) - {node.name for node in body})
    if missing:
      raise ValueError(f"--goal_repo={repo}: {name} has no {', '.join(missing)}; this is not "
                       f"the release of {REPOSITORY} the bench runs")
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    detect_anomaly |= name == RELEASED_FILE and _sets_detect_anomaly(tree)
  return Released(namespace["train"], detect_anomaly, namespace)


def _sets_detect_anomaly(tree: ast.Module) -> bool:
  """Whether the module calls `torch.autograd.set_detect_anomaly(True)` at its top level."""
  for node in tree.body:
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
      call = node.value
      if (ast.unparse(call.func) == "torch.autograd.set_detect_anomaly" and call.args
          and isinstance(call.args[0], ast.Constant) and call.args[0].value is True):
        return True
  return False


class _TorchWithoutSave:
  """`torch` for the released functions, whose `save` (the epoch's checkpoint) does nothing."""

  def __init__(self, torch):
    self._torch = torch

  def __getattr__(self, name):
    return getattr(self._torch, name)

  @staticmethod
  def save(*args, **kwargs):
    del args, kwargs


class _OneDeviceFabric:
  """What the loop calls on Lightning's Fabric, as DDP on one device does it."""
  global_rank = 0

  def __init__(self):
    self.losses: list[float] = []

  @staticmethod
  def all_gather(x, sync_grads=False):
    del sync_grads
    return x.unsqueeze(0)  # DDP stacks the processes' tensors: (world size, ...)

  def backward(self, loss):
    self.losses.append(float(loss.detach()))
    loss.backward()

  @staticmethod
  def print(*args, **kwargs):
    print(*args, **kwargs)

  @staticmethod
  def barrier():
    pass


class _ClockedLoader:
  """The same batch `steps` times, with the time of each request (after a step's `.item()`)."""

  def __init__(self, batch: tuple, steps: int, synchronize: Callable[[], None]):
    self.batch, self.steps, self.synchronize = batch, steps, synchronize
    self.times: list[float] = []

  def __len__(self):
    return self.steps

  def __iter__(self):
    for _ in range(self.steps):
      self._stamp()
      yield self.batch
    self._stamp()

  def _stamp(self):
    self.synchronize()
    self.times.append(time.perf_counter())


@dataclasses.dataclass
class Timing:
  first_s: float  # the first step (cuDNN and allocator warm-up)
  step_s: float  # mean of the timed steps
  losses: list[float]  # every step's loss, as the loop passed it to backward
  detect_anomaly: bool


def time_released(released: Released, reference, *, steps: int, warmup: int) -> Timing:
  """Runs the released `train` for `warmup + steps` steps (one epoch) on `reference`'s model,
  optimizer and batch (`torch_reference.TorchReference`)."""
  torch, c = reference.torch, reference.config
  h, w = reference.box_original_hw
  # On the device, as Fabric's loader puts every tensor of a batch: the loop's `.item()` calls
  # on the box then wait for the device, as they do in the release.
  device = reference.device
  column = lambda i: torch.tensor([box[i] for box in reference.boxes], device=device)
  bbox = {"x1": column(0), "y1": column(1), "x2": column(2), "y2": column(3),
          "width": torch.full((reference.batch,), w, device=device),
          "height": torch.full((reference.batch,), h, device=device)}
  batch = (reference.images, reference.ids, reference.local_images, reference.local_ids, bbox,
           list(reference.captions), list(reference.local_sentences))
  synchronize = torch.cuda.synchronize if reference.device == "cuda" else (lambda: None)
  loader = _ClockedLoader(batch, warmup + steps, synchronize)
  fabric = _OneDeviceFabric()
  with tempfile.TemporaryDirectory() as out_dir:
    released.namespace["args"] = types.SimpleNamespace(
        epochs=1, init_lr=reference.lr, min_lr=0.0, image_size=c.image_size,
        batch_size=reference.batch, output_dir=out_dir, model="bench", dataset="bench")
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), \
        torch.autograd.set_detect_anomaly(released.detect_anomaly), reference.autocast():
      released.train(fabric, reference.model, reference.optimizer, loader,
                     reference.processor)
  intervals = [b - a for a, b in zip(loader.times, loader.times[1:])]
  timed = intervals[warmup:] or intervals[-1:]
  return Timing(intervals[0], sum(timed) / len(timed), fabric.losses, released.detect_anomaly)
