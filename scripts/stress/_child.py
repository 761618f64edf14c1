"""Run one function of a scenario module in this (fresh) interpreter and print its result.

    python -m stress._child MODULE FUNCTION JSON-ARGUMENTS

The result is printed as JSON on the last line, after a marker, so what the function itself
prints does not get in the way.
"""

from __future__ import annotations

import importlib
import json
import sys
import warnings


def main() -> None:
    module, function, arguments = sys.argv[1:4]
    # Fault and security warnings are the library reporting what a scenario provokes on
    # purpose: scenarios that count them catch them themselves.
    from twat_cache.exceptions import CacheWarning

    warnings.simplefilter("ignore", CacheWarning)
    target = getattr(importlib.import_module(f"stress.{module}"), function)
    result = target(**json.loads(arguments))
    from stress.common import RESULT_MARK

    print(RESULT_MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
