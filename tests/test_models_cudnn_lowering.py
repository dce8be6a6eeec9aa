"""The cuDNN attention path lowered for CUDA on a CPU-only machine.

`jax.export` lowers for a platform it does not run on. JAX's cuDNN wrapper first asks the
installed cuDNN for its version and the GPU for its compute capability, then runs its own shape
checks and emits the fused kernel. With those two questions answered as on an H100 (cuDNN 9.10,
sm_90) the rest is JAX's real code, so this shows that the towers' padding (vision 197 -> 200,
text 77 -> 80 tokens) gives shapes cuDNN accepts and that every layer's attention, forward and
backward, is the fused kernel. Numerics and speed need a GPU (the gpu-marked test in
test_models_clip.py).
"""
import re

import jax
import jax.numpy as jnp
import pytest
from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention

from goal_jax.models import clip

FORWARD, BACKWARD = "__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"
PIN = "LayoutConstraint"  # towers.pin_row_major's custom call


@pytest.fixture
def as_if_on_h100(monkeypatch):
  monkeypatch.setattr(cudnn_attention, "check_cudnn_version", lambda: 91000)
  sm = lambda capability: tuple(int(x) for x in capability.split("."))
  monkeypatch.setattr(cudnn_attention, "check_compute_capability",
                      lambda capability: sm(capability) <= (9, 0))
  monkeypatch.setattr(cudnn_attention, "is_cuda_compute_capability_equal",
                      lambda capability: sm(capability) == (9, 0))


def _lower_train_step_for_cuda(config: clip.CLIPConfig, batch: int = 2) -> str:
  """StableHLO of the gradient of a contrastive-style loss through both towers, for CUDA."""
  model = clip.CLIP(config)

  def loss(params, images, ids):
    image, text = model.apply({"params": params}, images, ids)
    return jnp.sum(image["embedding"] @ text["embedding"].T)

  size = config.image_size
  args = (clip.abstract_params(config),
          jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
          jax.ShapeDtypeStruct((batch, config.context_length), jnp.int32))
  checks = [jax.export.DisabledSafetyCheck.custom_call(t) for t in (FORWARD, BACKWARD, PIN)]
  exported = jax.export.export(jax.jit(jax.grad(loss)), platforms=["cuda"],
                               disabled_checks=checks)(*args)
  return exported.mlir_module()


def _calls(module: str, target: str) -> int:
  return len(re.findall(re.escape(f"@{target}("), module))


@pytest.mark.parametrize("variant, context", [("B/16", 248), ("B/16", 77), ("L/14", 77)])
def test_every_attention_lowers_to_the_fused_kernel(as_if_on_h100, variant, context):
  # 2 layers per tower keep the lowering fast; the shapes per layer are the variant's.
  config = clip.get_model_config(variant, context_length=context, dtype="bfloat16",
                                 attention="cudnn", vision_layers=2, text_layers=2)
  module = _lower_train_step_for_cuda(config)
  assert _calls(module, FORWARD) == 4 and _calls(module, BACKWARD) == 4
  # Each tower's residual stream is pinned row-major where its blocks start, the layout XLA's
  # GPU layout assignment otherwise leaves free (it chose batch-innermost for the text tower).
  pins = re.findall(r"@LayoutConstraint\(.*?result_layouts = \[dense<\[(.*?)\]>.*?"
                    r"-> tensor<([^>]*)>", module)
  assert len(pins) == 4  # each tower's, forward and in the backward
  assert {layout for layout, _ in pins} == {"2, 1, 0"}  # minor to major: features innermost
  assert {shape for _, shape in pins} == {
      f"2x{-(-config.context_length // 8) * 8}x{config.text_width}xbf16",
      f"2x{-(-(config.grid_size ** 2 + 1) // 8) * 8}x{config.vision_width}xbf16"}


def test_the_pin_can_be_left_out(as_if_on_h100):
  """`layout_pin=False`: the layout left to XLA, as before the pin (bench's `free_layout`)."""
  config = clip.get_model_config("tiny/8", dtype="bfloat16", attention="cudnn",
                                 layout_pin=False)
  assert _calls(_lower_train_step_for_cuda(config), PIN) == 0


def test_unpadded_vision_tokens_are_rejected(as_if_on_h100):
  """The check the padding exists for is live: 197 vision tokens are refused."""
  config = clip.get_model_config("B/16", dtype="bfloat16", attention="cudnn",
                                 attention_pad_multiple=1, vision_layers=1, text_layers=1)
  with pytest.raises(NotImplementedError, match="sequence length Q 197"):
    _lower_train_step_for_cuda(config)


def test_xla_attention_lowers_without_the_fused_kernel(as_if_on_h100):
  config = clip.get_model_config("tiny/8", dtype="bfloat16", attention="xla")
  module = _lower_train_step_for_cuda(config)
  assert _calls(module, FORWARD) == 0 and _calls(module, BACKWARD) == 0
  assert _calls(module, PIN) == 0  # nothing pinned off the cuDNN path


@pytest.mark.parametrize("attention, convolutions, table_grad_dtype",
                         [("cudnn", 0, "f32"), ("xla", 2, "bf16")])
def test_the_embedding_knobs_follow_the_cudnn_path(as_if_on_h100, attention, convolutions,
                                                   table_grad_dtype):
  """"auto": on the cuDNN (GPU) path the patch embedding is a matrix product (no convolution,
  forward or for the kernel's gradient) and the token table's gradient is the split fp32 sum;
  elsewhere the convolution and the plain bf16 scatter-add, as before (towers.py)."""
  config = clip.get_model_config("tiny/8", dtype="bfloat16", attention=attention)
  module = _lower_train_step_for_cuda(config)
  assert module.count("stablehlo.convolution") == convolutions
  table = f"tensor<{config.vocab_size}x{config.text_width}x"
  into_table = re.findall(r"\}\) : \(" + re.escape(table) + r"(\w+)>, tensor<[^>]*>, "
                          r"tensor<[^>]*>\) -> " + re.escape(table), module)
  assert into_table and set(into_table) == {table_grad_dtype}


def test_packed_rows_take_xla_attention_on_the_cudnn_path(as_if_on_h100):
  """Packed captions (`text.packing`) need a segment mask, which cuDNN would take only as a
  bias it always differentiates: their attention is XLA's, and the rest of the path is the
  cuDNN one (the residual stream pinned)."""
  config = clip.get_model_config("tiny/8", dtype="bfloat16", attention="cudnn")
  model = clip.CLIP(config)
  batch, width, captions = 2, 64, 3

  def loss(params, ids, positions, segments, ends):
    return jnp.sum(model.apply({"params": params}, ids, positions, segments, ends,
                               method=clip.CLIP.encode_packed_text))

  row = jax.ShapeDtypeStruct((batch, 2, width), jnp.int32)  # two rows per pair
  args = (clip.abstract_params(config), row, row, row,
          jax.ShapeDtypeStruct((batch, captions), jnp.int32))
  checks = [jax.export.DisabledSafetyCheck.custom_call(t) for t in (FORWARD, BACKWARD, PIN)]
  module = jax.export.export(jax.jit(jax.grad(loss)), platforms=["cuda"],
                             disabled_checks=checks)(*args).mlir_module()
  assert _calls(module, FORWARD) == 0 and _calls(module, BACKWARD) == 0
  assert _calls(module, PIN) == 2  # forward and backward
