"""Prefect flows of the gem3d pipeline; importing this package applies the offline defaults first."""

from tasks.environment import apply_offline_defaults

apply_offline_defaults()
