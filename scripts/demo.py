#!/usr/bin/env python3
"""`make demo`: the tour of twat-cache (it lives in the package: `twat-cache demo` runs it too)."""

from __future__ import annotations

import sys

from twat_cache._demo import main

if __name__ == "__main__":
    sys.exit(main())
