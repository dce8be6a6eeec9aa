"""The method configs, one recipe file per method (`python -m goal_jax.train --config=<file>`).

Files to load by path (`goal_jax.config_utils.load_config`), not modules the library imports.
"""
