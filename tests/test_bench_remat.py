"""`--remat=auto`: the least recomputation whose kept activations fit beside the state."""
import pytest

from goal_jax.bench import remat, steps

GIB = 2 ** 30


@pytest.mark.parametrize("device_gib, want", [(80, ""), (40, "dots"), (16, "full"), (None, "")])
def test_choice_on_given_memory_sizes(device_gib, want):
  """Kept per device: none 60 GiB, dots 20, full 3; params 0.6 GiB, so the state takes 2.4 and
  85 % of the device is usable: 80 GiB leaves 65.6 (none fits), 40 leaves 31.6 (dots), 16
  leaves 11.2 (full); an unknown size (a CPU) keeps everything."""
  kept = {"": 60 * GIB, "dots": 20 * GIB, "full": 3 * GIB}
  device = None if device_gib is None else device_gib * GIB
  assert remat.choose(kept, int(0.6 * GIB), device) == want


def test_nothing_fits():
  kept = {"": 60 * GIB, "dots": 20 * GIB, "full": 3 * GIB}
  with pytest.raises(ValueError, match="lower the batch"):
    remat.choose(kept, int(0.6 * GIB), 4 * GIB)


def test_a_real_step_s_counts_decide():
  """On the tiny model's GOAL step: the kept bytes fall none > dots > full, and a device sized
  between what `dots` and no remat need, beside the state, gets `dots`."""
  import math  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  kept = {}
  for option in remat.ORDER:
    config = steps.method_config("goal", "tiny/8", 8, attention="xla", dtype="float32",
                                 remat=option)
    c = steps.loop.model_config_from(config, None)
    step = steps.make_train_step("goal", config, c, 8, extra_steps=1, materialise=False)
    kept[option] = steps.saved_activation_bytes(step) // step.mesh.size
  param_bytes = sum(math.prod(x.shape) * x.dtype.itemsize
                    for x in jax.tree.leaves(step.training.abstract_state["params"]))
  assert kept[""] > kept["dots"] > kept["full"] > 0
  activations = (kept[""] + kept["dots"]) / 2  # holds dots' activations, not all of them
  device = int((activations + remat.STATE_COPIES * param_bytes) / remat.USABLE)
  assert steps.choose_remat("goal", "tiny/8", 8, attention="xla", dtype="float32",
                            device_bytes=device) == "dots"
  assert steps.choose_remat("goal", "tiny/8", 8, attention="xla", dtype="float32",
                            device_bytes=10 * device) == ""
