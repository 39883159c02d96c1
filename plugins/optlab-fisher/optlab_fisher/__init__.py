"""Example optlab plugin (see plugin.py)."""
