"""The `twat_cache` loguru logger: silent unless TWAT_CACHE_DEBUG=1 or enabled by the app."""

from __future__ import annotations

import os

from loguru import logger

__all__ = ["logger"]

# loguru filters by the emitting module's name; disabling the package name silences every
# record from twat_cache without adding or removing any handler of the application.
if os.environ.get("TWAT_CACHE_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}:
    logger.enable("twat_cache")
else:
    logger.disable("twat_cache")
