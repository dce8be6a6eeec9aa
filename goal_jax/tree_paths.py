"""Names pytree leaves 'a/b/c' and matches them against `(regex, value)` rule lists.

Optimizer groups and sharding strategies are both written as big_vision-style `(regex, value)`
pairs over these names, so both share one matcher and one error for a regex that matches nothing.
"""
import re
from typing import Any, Callable, Sequence

import jax


def path_str(path: Sequence[Any]) -> str:
  """A `jax.tree_util` key path as 'a/b/c' (dict keys, attribute names, sequence indices)."""
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def map_with_names(fn: Callable[[str, Any], Any], tree: Any) -> Any:
  """`jax.tree.map` whose function also gets each leaf's 'a/b/c' name."""
  return jax.tree_util.tree_map_with_path(lambda path, x: fn(path_str(path), x), tree)


def leaf_names(tree: Any) -> list[str]:
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def match_rules(tree: Any, rules: Sequence[tuple[str, Any]], *, what: str,
                default: Any = None, require_all: bool = False, allow_unused: bool = False) -> Any:
  """Maps each leaf to the value of the first rule whose regex fully matches its name.

  Args:
    tree: a pytree (params, abstract state, ...).
    rules: `(regex, value)` pairs; the first full match wins.
    what: what the rules are for, used in error messages.
    default: the value of leaves no rule matches.
    require_all: raise if some leaf matches no rule (instead of taking `default`).
    allow_unused: accept rules that take no leaf (for rule lists shared by several trees).

  Returns:
    A pytree of values with the structure of `tree`.

  Raises:
    ValueError: a rule takes no leaf (a typo, or earlier rules take all its matches) unless
      `allow_unused`, or `require_all` and a leaf is unmatched.
  """
  compiled = [(re.compile(regex), value) for regex, value in rules]
  used = [False] * len(compiled)
  unmatched = []

  def pick(name, _):
    for i, (regex, value) in enumerate(compiled):
      if regex.fullmatch(name):
        used[i] = True
        return value
    unmatched.append(name)
    return default

  out = map_with_names(pick, tree)
  unused = [rules[i][0] for i, u in enumerate(used) if not u]
  if unused and not allow_unused:
    raise ValueError(f"{what}: rule {unused} takes no leaf (it matches none, or earlier rules take "
                     f"all its matches); leaves are e.g. {leaf_names(tree)[:8]}")
  if require_all and unmatched:
    raise ValueError(f"{what}: no rule matches {unmatched[:8]}"
                     f"{' ...' if len(unmatched) > 8 else ''}; add a catch-all ('.*', ...)")
  return out
