"""`--candidates`: ways to compile or compute the same step, each timed beside the step as built.

The H200 profiles (README, Measurements) put 29-34 % of the device time in layer norms and the
elementwise work between the matrix products, and 5-8 % in the optimizer update: the memory-bound
work that keeps MFU near 32 %. Each candidate below attacks part of it without changing what the
step computes; which of them pays is for a GPU to say, so the bench compiles the method's real
step once per candidate, in the same process and on the same params and batch as the baseline,
and reports its step time against the baseline's and the first step's loss beside the
baseline's (equal up to float rounding, or the candidate is wrong).

A candidate is XLA compiler options (`jax.stages.Lowered.compile(compiler_options=...)`: per
program, so the baseline and every candidate share one process), model config fields that pick
another form of the same function (`model_overrides`), input config fields that lay the same
batch out another way (`input_overrides`, for the `methods` named), or a mix. Options of another
backend are ignored (the GPU's on a CPU), so every candidate runs anywhere; a name XLA does not
know is an error of the row, not of the run. Candidates that lay the texts out another way keep
every caption of the bench's batch whole, so their first losses too must equal the step's.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

ALL = "all"


@dataclasses.dataclass(frozen=True)
class Candidate:
  name: str
  why: str
  compiler_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  input_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  methods: tuple[str, ...] = ()  # the methods it applies to; () all

  def applies_to(self, method: str) -> bool:
    return not self.methods or method in self.methods


CANDIDATES = (
    Candidate("triton_gemm_any",
              "XLA's Triton GEMM emitter for every matmul it supports (cuBLAS otherwise), so the "
              "bias adds, quick-GELU and casts around a matmul can fuse into it",
              compiler_options={"xla_gpu_triton_gemm_any": True}),
    Candidate("cudnn_gemm_fusion",
              "cuDNN's GEMM fusions (Hopper): elementwise producers and consumers of a matmul in "
              "one cuDNN kernel",
              compiler_options={"xla_gpu_cudnn_gemm_fusion_level": 2}),
    Candidate("centered_variance",
              "layer norm variance as E[(x - E[x])^2] instead of Flax's one-pass "
              "E[x^2] - E[x]^2 (the same function): alone, to tell its cost from the rewrite's",
              model_overrides={"layer_norm_fast_variance": False}),
    Candidate("cudnn_layer_norm",
              "XLA's rewrite of layer norms into cuDNN's norm kernels, on the centred variance "
              "(Flax's clip at 0 hides the pattern from it)",
              compiler_options={"xla_gpu_enable_cudnn_layer_norm": True},
              model_overrides={"layer_norm_fast_variance": False}),
    Candidate("packed_short_text",
              "MulCLIP's summary and sentences packed in one 320-token row per pair "
              "(`goal_jax.text.packing`) instead of nine 77-token rows: the same embeddings "
              "(no caption of the bench's batch is dropped at 320), 46 % of the text tokens",
              input_overrides={"short_text_packing": 320}, methods=("mulclip",)),
    Candidate("packed_region_text",
              "FG-CLIP's summary, region captions and hard negatives (45 per pair) packed in 12 "
              "rows of 128 tokens per pair (`goal_jax.text.packing`) instead of 45 rows of 77: "
              "the same embeddings (none of the bench's batch dropped), 0.54x the step's FLOPs",
              input_overrides={"short_text_packing": 128, "short_text_rows": 12},
              methods=("fgclip",)),
    Candidate("short_local_text",
              "GOAL's local sentence at 77 tokens (`config.input.local_context`) instead of the "
              "caption's 248, as a text forward of its own: the same embeddings for sentences "
              "that fit (all of the bench's batch), 13 % fewer FLOPs at B/16",
              input_overrides={"local_context": 77}, methods=("goal",)),
)
# The step as it was before a change the profiles asked for: timed beside the step as built, it
# gives that change's before/after row (CLIP only: SigLIP has no such field).
BEFORE = (
    Candidate("free_layout",
              "the towers' residual streams left to XLA's layout assignment, as before "
              "2026-12-05 (it laid CLIP's text tower and SigLIP's towers out batch-innermost on "
              "GPUs), against the row-major pin (`towers.pin_row_major`)",
              model_overrides={"layout_pin": False}),
    Candidate("eot_gather",
              "the text tower's EOT token by take_along_axis (a gather, whose gradient is a "
              "scatter), as before 2026-12-05, against the masked sum (`clip.token_at`)",
              model_overrides={"eot_pooling": "gather"}),
    Candidate("conv_patches",
              "the patch embedding as cuDNN's convolution, as before 2026-12-05 (0.53 ms of the "
              "global step on an H200 for 15 GFLOP), against one matrix product over the "
              "flattened patches (`towers.PatchEmbedding`)",
              model_overrides={"patch_embedding": "conv"}),
    Candidate("scatter_embedding_grad",
              "the token embedding's gradient as one scatter-add of every position, as before "
              "2026-12-05 (its padding positions' atomic adds queue on one row: 0.86 ms of GOAL's "
              "step on an H200), against the padding id summed apart (`towers.embed_tokens`)",
              model_overrides={"token_embedding_grad": "scatter"}),
)
BY_NAME = {c.name: c for c in CANDIDATES + BEFORE}


def parse(names: Sequence[str]) -> list[Candidate]:
  """`--candidates` values: names, or `all`; unknown names raise with the known ones."""
  if list(names) == [ALL]:
    return list(CANDIDATES + BEFORE)
  unknown = [n for n in names if n not in BY_NAME]
  if unknown:
    raise ValueError(f"--candidates: unknown {unknown}; known: {sorted(BY_NAME)} or {ALL}")
  return [BY_NAME[n] for n in dict.fromkeys(names)]


def impl_name(candidate: Candidate | None) -> str:
  """A row's `impl`: the step as built is `goal_jax`, a candidate's `goal_jax+<name>`, so the
  project's targets (read from `goal_jax` rows) never use a candidate's time."""
  return "goal_jax" if candidate is None else f"goal_jax+{candidate.name}"
