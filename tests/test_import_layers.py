"""The house drawn from imports: every import runs down the layers, and none closes a cycle.

Read from the source (`ast`, function-level imports included, where cycles used to hide), so it
needs nothing imported. DESIGN.md's layout section describes the same layers.
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "goal_jax"

# Bottom to top; a module may import its own package, lower layers, and other packages of its
# own layer as long as the packages' graph has no cycle.
LAYERS = (
    ("files", "cli", "config_utils", "constants", "figures", "text", "tree_paths"),
    ("models", "sharding"),
    ("data",),
    ("losses",),
    ("methods",),
    ("evaluation", "lism"),
    ("training",),
    ("bench", "configs", "demo", "distributed", "train", "evaluate", "embed", "visualize",
     "convert", "export_hf", "datasets", "prepare", "study"),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
  """The goal_jax modules `path` imports (`from goal_jax.x import y` counts `goal_jax.x.y` when
  that is a module, else `goal_jax.x`)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("goal_jax")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("goal_jax"):
      for alias in node.names:
        candidate = f"{node.module}.{alias.name}"
        found.add(candidate if _is_module(candidate) else node.module)
  return found


def _is_module(name: str) -> bool:
  path = PACKAGE.parent.joinpath(*name.split("."))
  return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
  return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _top(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` (a list of nodes, first = last), or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state and (found := visit(nxt)):
        return found
    state[node] = 2
    path.pop()
    return None

  for node in sorted(graph):
    if node not in state and (found := visit(node)):
      return found
  return None


def test_every_package_has_a_layer():
  tops = {_top(m) for m in _graph()} - {""}
  assert tops <= set(RANK), sorted(tops - set(RANK))


def test_imports_run_down():
  upward = sorted(f"{source} -> {target}" for source, targets in _graph().items()
                  for target in targets
                  if _top(source) in RANK and _top(target) in RANK
                  and RANK[_top(target)] > RANK[_top(source)])
  assert not upward, "imports running up the layers:\n" + "\n".join(upward)


def test_no_import_cycle():
  graph = _graph()
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))
  packages = {}
  for source, targets in graph.items():
    packages.setdefault(_top(source), set()).update(
        _top(t) for t in targets if _top(t) != _top(source))
  assert _cycle(packages) is None, " -> ".join(_cycle(packages))


@pytest.mark.parametrize("graph, cyclic", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"a"}}, True),
])
def test_cycle_finder(graph, cyclic):
  assert (_cycle(graph) is not None) == cyclic
