"""`--remat=auto`: the least recomputation whose compiled step XLA plans within the device."""
import pytest

from goal_jax.bench import remat, steps

GIB = 2 ** 30
PLANS = {"": 60 * GIB, "dots": 20 * GIB, "full": 3 * GIB}


@pytest.mark.parametrize("device_gib, want, compiled", [
    (80, "", [""]), (40, "dots", ["", "dots"]), (16, "full", ["", "dots", "full"]),
    (None, "", [])])
def test_choice_on_given_memory_sizes(device_gib, want, compiled):
  """95 % of the allocator's limit is usable: 80 GiB gives 76 (none fits), 40 gives 38 (dots),
  16 gives 15.2 (full); an unknown size (a CPU) keeps everything and compiles nothing. Options
  are planned least recomputation first, and only until one fits."""
  asked = []

  def plan_of(option):
    asked.append(option)
    return PLANS[option]
  device = None if device_gib is None else device_gib * GIB
  choice, plans = remat.choose(plan_of, device)
  assert choice == want and asked == compiled
  assert plans == {option: PLANS[option] for option in compiled}


def test_nothing_fits():
  with pytest.raises(ValueError, match="even --remat=full needs 3.0 GiB .* lower the batch"):
    remat.choose(PLANS.get, 3 * GIB)


def test_a_real_step_compiled_here(capsys):
  """The tiny GOAL step compiled on this CPU: a device far larger than its plan keeps
  everything after one compilation; one smaller than any plan is told to lower the batch. (On
  a CPU XLA plans about the same memory with or without remat, so the order of the plans is
  checked where it matters, compiled for an H100: test_bench_gpu_compile.py.)"""
  kwargs = dict(attention="xla", dtype="float32")
  assert steps.choose_remat("goal", "tiny/8", 16, device_bytes=64 * GIB, **kwargs) == ""
  printed = capsys.readouterr().out
  assert "XLA plans none at" in printed and "dots" not in printed and "-> none" in printed
  with pytest.raises(ValueError, match="lower the batch"):
    steps.choose_remat("goal", "tiny/8", 16, device_bytes=2 ** 20, **kwargs)


def test_planned_bytes_of_a_program_with_a_donated_argument():
  """Arguments, outputs less the ones that reuse a donated argument's buffer, temporaries."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = jax.ShapeDtypeStruct((1000,), jnp.float32)
  kept = jax.jit(lambda a: (a + 1.0, a * 2.0)).lower(x).compile()
  donated = jax.jit(lambda a: (a + 1.0, a * 2.0), donate_argnums=0).lower(x).compile()
  temp = lambda c: c.memory_analysis().temp_size_in_bytes  # noqa: E731
  tuple_table = 16  # the output tuple's own pointers, as XLA counts them on a CPU
  assert remat.planned_bytes(kept) == 4000 + 8000 + tuple_table + temp(kept)
  # One output written into the donated argument's buffer.
  assert remat.planned_bytes(donated) == 4000 + 4000 + tuple_table + temp(donated)
