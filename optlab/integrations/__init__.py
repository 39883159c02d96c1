"""Integrations with training frameworks (optional extras): ``optlab.integrations.lightning``."""
