"""JAX's persistent compilation cache as every command sets it up: a second process loads the
compiled program instead of compiling it."""
import os
import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent("""
    import sys
    import jax
    import jax.numpy as jnp
    from goal_jax import cli

    events = []
    jax.monitoring.register_event_listener(lambda name, **_: events.append(name))
    cli.enable_compilation_cache(sys.argv[1], min_compile_s=0.0)
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * 3.0 + 1.0)
    print(float(f(jnp.arange(64.0).reshape(8, 8) / 64)))
    print("hits", sum("compilation_cache/cache_hits" in e for e in events))
    """)


def _run(cache: str) -> tuple[str, int]:
  proc = subprocess.run([sys.executable, "-c", PROGRAM, cache], capture_output=True, text=True,
                        timeout=300, env={**os.environ, "XLA_FLAGS": ""})
  assert proc.returncode == 0, proc.stderr[-3000:]
  value, hits = proc.stdout.split("\n")[:2]
  return value, int(hits.split()[1])


def test_second_process_reads_the_compiled_program(tmp_path):
  cache = str(tmp_path / "jax")
  value, hits = _run(cache)
  assert hits == 0 and os.listdir(cache)  # compiled, then written
  again, hits = _run(cache)
  assert hits >= 1 and again == value  # read back, and it computes the same


def test_empty_path_leaves_the_cache_off(tmp_path):
  value, hits = _run("")
  assert hits == 0 and not os.listdir(tmp_path)
