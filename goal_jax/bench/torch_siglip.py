"""The PyTorch reference of a SigLIP step: transformers' `SiglipModel` of the same architecture,
batch and device, trained with its own sigmoid loss (`return_loss=True`), eager and compiled.

What a researcher coming from transformers would run instead of this project: the global
(long-caption) step, which is what the comparison is about; PyTorch and transformers are
optional dependencies, imported here only.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import transformers

from goal_jax import methods
from goal_jax.bench import batches
from goal_jax.bench.timing import Row, time_row
from goal_jax.models import siglip
from goal_jax.models import siglip_weights


class SiglipReference:
  """`SiglipModel` with SDPA attention, fp32 weights, AdamW, bf16 autocast on a GPU."""

  def __init__(self, c: siglip.SigLIPConfig, batch: int, lr: float = 5e-6, seed: int = 0):
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    hf_config = transformers.SiglipConfig(**siglip_weights.config_to_hf(c))
    self.model = transformers.SiglipModel._from_config(  # pylint: disable=protected-access
        hf_config, attn_implementation="sdpa").to(self.device).train()
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.05)
    rng = np.random.default_rng(seed)
    self.images = torch.from_numpy(rng.normal(
        size=(batch, 3, c.image_size, c.image_size)).astype(np.float32)).to(self.device)
    self.ids = torch.from_numpy(batches.random_ids(rng, (batch,), c.context_length,
                                                   c.vocab_size)).long().to(self.device)

  def block(self, out) -> float:
    if self.device == "cuda":
      torch.cuda.synchronize()
    return float(out.detach())

  def loss(self, pixel_values, input_ids):
    return self.model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True).loss

  def step_fn(self, compile_model: bool) -> Callable[[], Any]:
    loss_fn = torch.compile(self.loss) if compile_model else self.loss

    def step():
      with torch.autocast(self.device, torch.bfloat16, enabled=self.device == "cuda"):
        loss = loss_fn(self.images, self.ids)
      loss.backward()
      self.optimizer.step()
      self.optimizer.zero_grad(set_to_none=True)
      return loss

    return step


def bench_reference(variant: str, batch: int, *, steps: int, warmup: int, compile_model: bool,
                    peak: float | None, jax_config: siglip.SigLIPConfig,
                    input_config) -> list[Row]:
  """The global step of `SiglipModel`, eager and (with `compile_model`) `torch.compile`d."""
  reference = SiglipReference(jax_config, batch)
  runs = [("hf_siglip_sdpa", False)] + ([("hf_siglip_sdpa_compile", True)] if compile_model
                                        else [])
  flops = methods.get("global").train_flops_per_step(jax_config, input_config, batch)
  return [time_row(Row(impl, "global", variant, batch, train_flops=flops),
                   lambda compiled=compiled: reference.step_fn(compiled), steps=steps,
                   warmup=warmup, block=reference.block, peak=peak, may_fail=compiled)
          for impl, compiled in runs]
