"""Maintenance tasks (nightly upkeep): each a function of a ``TaskContext``."""
