"""The package version, in a leaf module so integrations can read it without the package."""

__all__ = ["__version__"]

__version__ = "0.1.0"
