"""`python -m twat_cache`: the twat-cache command line."""

from __future__ import annotations

import sys

from twat_cache.cli import main

sys.exit(main())
