"""Runnable examples (a package so that tests and mypy import them as ``examples.<name>``)."""
