"""Version of twat-cache."""

__version__ = "0.1.0"
