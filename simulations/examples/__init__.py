"""Example experiment files and example custom data (see README)."""
