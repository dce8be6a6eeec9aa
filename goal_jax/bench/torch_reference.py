"""PyTorch baselines on the same model, batch and device (`--reference`): HF CLIP with SDPA
attention, eager and `torch.compile`d, on the global step; a GOAL step written the way the
official code (https://github.com/PerceptualAI-Lab/GOAL) does it; and, given a checkout of that
repository, its released loop itself (`official_goal`). torch and transformers are
imported here only, so the rest of the benchmark runs without them."""
from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import transformers

from goal_jax import methods
from goal_jax.bench import official_goal
from goal_jax.bench.timing import Row, is_out_of_memory, time_row
from goal_jax.data import pipeline
from goal_jax.models import clip
from goal_jax.text import tokenizer as text_tokenizer
from goal_jax.text.tokenizer import EOT_ID, SOT_ID


_WORDS = ("a red blue green small large wooden metal round square cup table chair lamp window "
          "book plate bowl shelf door wall floor light shadow near under behind beside left right "
          "top bottom corner center bright dark old new white black striped painted glass "
          "ceramic").split()
_BOX_ORIGINAL_HW = (480, 640)


def synthetic_texts(rng: np.random.Generator, batch: int, sentences: int = 14,
                    words: int = 16) -> tuple[list[str], list[str]]:
  """(long captions of `sentences` sentences joined by '. ', one of their sentences each)."""
  captions, locals_ = [], []
  for _ in range(batch):
    parts = [" ".join(rng.choice(_WORDS, size=words)) for _ in range(sentences)]
    captions.append(". ".join(parts) + ".")
    locals_.append(parts[int(rng.integers(0, sentences // 2))])
  return captions, locals_


class TorchReference:
  """HF CLIP of the same architecture, batch and device, with the steps the targets compare."""

  box_original_hw = _BOX_ORIGINAL_HW

  def __init__(self, c: clip.CLIPConfig, batch: int, lr: float = 5e-6, seed: int = 0):
    self.torch, self.config, self.batch, self.lr = torch, c, batch, lr
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    hf_config = transformers.CLIPConfig(
        text_config=dict(hidden_size=c.text_width, intermediate_size=c.text_mlp_dim,
                         num_hidden_layers=c.text_layers, num_attention_heads=c.text_heads,
                         max_position_embeddings=c.context_length, hidden_act=c.activation,
                         vocab_size=c.vocab_size, eos_token_id=EOT_ID, bos_token_id=SOT_ID),
        vision_config=dict(hidden_size=c.vision_width, intermediate_size=c.vision_mlp_dim,
                           num_hidden_layers=c.vision_layers, num_attention_heads=c.vision_heads,
                           image_size=c.image_size, patch_size=c.patch_size,
                           hidden_act=c.activation),
        projection_dim=c.embed_dim)
    self.model = transformers.CLIPModel._from_config(  # pylint: disable=protected-access
        hf_config, attn_implementation="sdpa").to(self.device).train()
    # As the official GOAL script: fp32 weights and AdamW, bf16 autocast on the GPU.
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.05)
    self.autocast = lambda: torch.autocast(self.device, torch.bfloat16,
                                           enabled=self.device == "cuda")
    rng = np.random.default_rng(seed)
    images = lambda: torch.from_numpy(
        rng.normal(size=(batch, 3, c.image_size, c.image_size)).astype(np.float32)).to(self.device)
    self.images, self.local_images = images(), images()
    self.tokenizer = _hf_tokenizer(c.context_length)
    # What the release's loop calls `processor(text=...)` on (text only: no image processing).
    # The PIL image processor where transformers has one: it needs no torchvision.
    image_processor = getattr(transformers, "CLIPImageProcessorPil",
                              transformers.CLIPImageProcessor)()
    self.processor = transformers.CLIPProcessor(image_processor=image_processor,
                                                tokenizer=self.tokenizer)
    self.captions, self.local_sentences = synthetic_texts(rng, batch)
    self.boxes = [self._random_box(rng) for _ in range(batch)]
    encode = lambda texts: self.tokenizer(texts, truncation=True, padding="max_length",
                                          max_length=c.context_length,
                                          return_tensors="pt")["input_ids"].to(self.device)
    self.ids, self.local_ids = encode(self.captions), encode(self.local_sentences)

  @staticmethod
  def _random_box(rng) -> tuple[float, float, float, float]:
    h, w = _BOX_ORIGINAL_HW
    x1, y1 = rng.uniform(0, w * 0.7), rng.uniform(0, h * 0.7)
    return x1, y1, x1 + rng.uniform(20, w - x1), y1 + rng.uniform(20, h - y1)

  def _contrastive(self, image, text):
    torch = self.torch
    logits = self.model.logit_scale.exp() * image @ text.t()
    labels = torch.arange(image.shape[0], device=image.device)
    ce = torch.nn.functional.cross_entropy
    return (ce(logits, labels) + ce(logits.t(), labels)) / 2

  def _update(self, loss):
    loss.backward()
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    return loss

  def global_loss(self, pixel_values, input_ids):
    out = self.model(input_ids=input_ids, pixel_values=pixel_values)
    return self._contrastive(out.image_embeds, out.text_embeds)

  def global_step_fn(self, compile_model: bool) -> Callable[[], Any]:
    loss_fn = self.torch.compile(self.global_loss) if compile_model else self.global_loss

    def step():
      with self.autocast():
        loss = loss_fn(self.images, self.ids)
      return self._update(loss)

    return step

  # The official GOAL step, rebuilt from its released `goal_loss_finetuning.py`.

  def _box_patches(self, box) -> list[int]:
    """Token indices of every patch the box touches after the naive stretch to S×S."""
    s, p = self.config.image_size, self.config.patch_size
    grid = s // p
    h, w = _BOX_ORIGINAL_HW
    x1, y1 = min(max(round(box[0] * s / w), 0), s - 1), min(max(round(box[1] * s / h), 0), s - 1)
    x2, y2 = min(max(round(box[2] * s / w), 0), s), min(max(round(box[3] * s / h), 0), s)
    indices = []
    for row in range(y1 // p, math.ceil(y2 / p)):
      for col in range(x1 // p, math.ceil(x2 / p)):
        indices.append(1 + row * grid + col)
    return indices or [1]

  def _sentence_span(self, caption: str, sentence: str) -> tuple[int, int]:
    """GOAL's span rule: the prefix re-tokenised with BOS/EOS gives `start` (hence its +1 shift)."""
    context = self.config.context_length
    pieces = [piece.strip() for piece in caption.split(".")]
    n_seg = len(self.tokenizer(sentence, add_special_tokens=False)["input_ids"])
    if sentence in pieces:
      k = pieces.index(sentence)
      prefix = ". ".join(pieces[:k]) + (". " if k > 0 else "")
    else:
      prefix = caption[:max(caption.find(sentence), 0)]
    start = len(self.tokenizer(prefix)["input_ids"])
    if start >= context:
      start = max(context - 1 - n_seg, 1)
    end = min(start + n_seg, context - 1)
    return (start, end) if end > start else (1, 1 + n_seg)

  def official_goal_loss(self):
    """The released step's tensor work (`official_goal.py` runs the release itself): one pass
    over the global and local pairs keeping every layer's tokens, then a second pass of each tower
    over the same 2B inputs for the last block's tokens before the final LN."""
    torch, model, b = self.torch, self.model, self.batch
    normalize = lambda x: torch.nn.functional.normalize(x, dim=-1)
    pixels = torch.cat([self.images, self.local_images])
    ids = torch.cat([self.ids, self.local_ids])
    out = model(input_ids=ids, pixel_values=pixels, output_hidden_states=True)
    image_embeds, text_embeds = out.image_embeds, out.text_embeds
    loss = self._contrastive(image_embeds[:b], text_embeds[:b])
    loss = loss + 0.5 * self._contrastive(image_embeds[b:], text_embeds[b:])
    vision_tokens = model.vision_model(pixel_values=pixels,
                                       output_hidden_states=True).hidden_states[-1][:b]
    text_tokens = model.text_model(input_ids=ids, output_hidden_states=True).hidden_states[-1][:b]
    patch_embeds, span_embeds = [], []
    for a in range(b):
      pooled = vision_tokens[a, self._box_patches(self.boxes[a])].mean(0)
      patch_embeds.append(normalize(model.visual_projection(
          model.vision_model.post_layernorm(pooled))))
    for a in range(b):
      start, end = self._sentence_span(self.captions[a], self.local_sentences[a])
      pooled = text_tokens[a, start:end].mean(0)
      span_embeds.append(normalize(model.text_projection(
          model.text_model.final_layer_norm(pooled))))
    tsl_image = ((torch.stack(patch_embeds) * image_embeds[b:]).sum(-1) - 1).pow(2).mean()
    tsl_text = ((torch.stack(span_embeds) * text_embeds[b:]).sum(-1) - 1).pow(2).mean()
    return loss + tsl_image + tsl_text

  def official_goal_step_fn(self) -> Callable[[], Any]:
    def step():
      with self.autocast():
        loss = self.official_goal_loss()
      return self._update(loss)

    return step

  def block(self, out):
    if self.device == "cuda":
      self.torch.cuda.synchronize()
    return float(out.detach())


def _hf_tokenizer(context: int):
  """HF's fast CLIP tokenizer (what the official code calls) built from the vendored BPE."""
  with tempfile.TemporaryDirectory() as tmp:
    text_tokenizer.get_tokenizer().write_hf_tokenizer_files(tmp, model_max_length=context)
    return transformers.CLIPTokenizerFast.from_pretrained(tmp)


def bench_reference(variant: str, batch: int, *, steps: int, warmup: int, compile_model: bool,
                    peak: float | None, jax_config: clip.CLIPConfig,
                    goal_repo: str | None = None) -> list[Row]:
  """PyTorch rows for one (variant, batch): HF SDPA (eager, compiled) global; the official GOAL
  step rebuilt; with `goal_repo`, GOAL's released loop itself (`official_goal`)."""
  released = official_goal.load(goal_repo) if goal_repo else None  # a bad checkout fails first
  reference = TorchReference(jax_config, batch)
  runs = [("hf_sdpa", "global", lambda: reference.global_step_fn(False))]
  if compile_model:
    runs.append(("hf_sdpa_compile", "global", lambda: reference.global_step_fn(True)))
  runs.append(("official_goal", "goal", reference.official_goal_step_fn))
  flops = lambda method: methods.get(method).train_flops_per_step(
      jax_config, pipeline.default_config(), batch)
  rows = []
  for impl, method, make_step in runs:
    row = Row(impl, method, variant, batch, train_flops=flops(method))
    rows.append(time_row(row, make_step, steps=steps, warmup=warmup, block=reference.block,
                         peak=peak, may_fail=impl == "hf_sdpa_compile"))
  if released is not None:
    rows.append(released_row(released, reference, variant, steps=steps, warmup=warmup,
                             peak=peak, train_flops=flops("goal")))
  return rows


def released_row(released: official_goal.Released, reference: TorchReference, variant: str, *,
                 steps: int, warmup: int, peak: float | None, train_flops: int) -> Row:
  """GOAL's released loop timed on `reference`'s model and batch (out of memory: in the row)."""
  row = Row("official_goal_released", "goal", variant, reference.batch, train_flops=train_flops)
  try:
    timing = official_goal.time_released(released, reference, steps=steps, warmup=warmup)
  except Exception as e:  # noqa: BLE001 - report the row, keep benchmarking
    if not is_out_of_memory(e):
      raise
    row.error = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return row
  row.compile_s, row.step_s = timing.first_s, timing.step_s
  if peak:
    row.mfu = row.train_flops / row.step_s / (peak * 1e12)
  return row
