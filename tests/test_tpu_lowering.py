"""Every method's training step lowers for TPUs on this CPU (`jax.export` needs no TPU), with
XLA's attention and with the Pallas TPU flash-attention kernel; B/16, batch 16, bf16, the mesh
of this process's devices."""
import jax
from jax import export
import pytest

from goal_jax import methods
from goal_jax.bench import steps


@pytest.mark.parametrize("attention", ["xla", "pallas_tpu"])
@pytest.mark.parametrize("method", sorted(methods.REGISTRY))
def test_training_step_exports_for_tpu(method, attention):
  config = steps.method_config(method, "B/16", 16, attention=attention, dtype="bfloat16")
  model_config = steps.loop.model_config_from(config, None)
  step = steps.make_train_step(method, config, model_config, 16, extra_steps=1,
                               materialise=False)
  with jax.set_mesh(step.mesh):
    exported = export.export(step.training.step_fn, platforms=("tpu",))(
        step.training.abstract_state, step.abstract_batch())
  assert exported.platforms == ("tpu",)
  kernels = exported.mlir_module().count("tpu_custom_call")  # Mosaic: the Pallas kernels
  assert (kernels > 0) == (attention == "pallas_tpu")


@pytest.mark.parametrize("attention", ["xla", "pallas_tpu"])
@pytest.mark.parametrize("method, width, rows", [("mulclip", 320, 1), ("fgclip", 128, 12)])
def test_packed_rows_export_for_tpu(method, width, rows, attention):
  """The packed short captions (`text.packing`): the Pallas kernel takes their segments as its
  segment ids."""
  config = steps.method_config(method, "B/16", 16, attention=attention, dtype="bfloat16")
  config.input.update(short_text_packing=width, short_text_rows=rows)
  model_config = steps.loop.model_config_from(config, None)
  step = steps.make_train_step(method, config, model_config, 16, extra_steps=1,
                               materialise=False)
  assert step.host_batch["short_ids"].shape == (16, rows, width)
  with jax.set_mesh(step.mesh):
    exported = export.export(step.training.step_fn, platforms=("tpu",))(
        step.training.abstract_state, step.abstract_batch())
  kernels = exported.mlir_module().count("tpu_custom_call")
  assert (kernels > 0) == (attention == "pallas_tpu")
