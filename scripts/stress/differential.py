"""Scenario 10, differential: random call sequences through every decorator and engine return
exactly what the uncached function returns.

The function under test returns `reveal()` of its arguments: a description of everything a
function can observe of them under the key rule (exact types at every node, float bits and
so the sign of zero, Decimal digits, order where equality depends on it, tzinfo and fold, a
defaultdict's factory, NumPy dtype/shape/bytes, pandas values/index/columns/dtypes/names, a
user class through its own equality). Arguments come from a hypothesis strategy over
built-in, standard-library, NumPy and pandas values and user classes; each value is called
next to a twin of it (0.0 and -0.0, an OrderedDict in two orders, one instant in two time
zones, '<i4' and '>i4' arrays...), by position and by keyword, then again at random, so
that hits happen. Any call served another call's result is a mismatch. The machinery is
shared with `tests/test_differential.py`: tests/_differential.py (engines, runner), on
tests/_scripts.py (twins, call scripts), tests/_arguments.py (values) and tests/_reveal.py.

Rows per decorator: mismatches (target 0, "0 mismatches in N calls"), calls whose key the
cache refused and ran uncached (target 0), and calls served from the cache (at least one,
so the figure cannot pass by never caching).
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any

from stress.common import ZERO, Rows, Target, progress

NAME = "differential"
TESTS = Path(__file__).resolve().parents[2] / "tests"
#: Generated call sequences per decorator, and the most distinct calls in one (each with
#: its twins: about three calls each, then as many repeats).
EXAMPLES = {"full": 3_000, "quick": 20}
ENTRIES = {"full": 8, "quick": 5}
HIT = Target("> 0", lambda value: value is not None and value > 0)
RAN = Target("runs", lambda value: value is True)
FIGURE = "wrong results (mismatches)"


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    sys.path.insert(0, str(TESTS))
    import _differential as differential

    rows = Rows(NAME)
    for engine in differential.ENGINES:
        if engine.group not in engines:
            continue
        if engine.server and redis_url is None:
            rows.skip(engine.label, FIGURE, "skipped: no redis-server")
            continue
        progress(f"{NAME}: {engine.label}, {EXAMPLES[profile]:,} call sequences")
        started = time.monotonic()
        try:
            tally = differential.check(
                engine,
                redis_url,
                EXAMPLES[profile],
                strict=False,
                random_seed=seed,
                entries=ENTRIES[profile],
            )
        except Exception as exc:  # this engine's rows say it could not run; the others go on
            rows.judge(
                engine.label,
                "scenario ran",
                False,
                RAN,
                shown=f"failed: {exc!r}"[:200],
                traceback=traceback.format_exc()[-4000:],
            )
            continue
        rows.judge(
            engine.label,
            FIGURE,
            tally.mismatches,
            ZERO,
            shown=f"{tally.mismatches} mismatches in {tally.calls:,} calls",
            samples=tally.samples,
            calls=tally.calls,
            sequences=tally.examples,
            seconds=time.monotonic() - started,
        )
        rows.judge(
            engine.label,
            "calls whose key was refused (run uncached)",
            tally.faults,
            ZERO,
            shown=f"{tally.faults:,} of {tally.calls:,} calls",
            samples=tally.refused,
        )
        rows.judge(
            engine.label,
            "calls served from the cache (hits)",
            tally.hits,
            HIT,
            shown=f"{tally.hits:,} of {tally.calls:,} calls",
        )
    return rows.as_dicts()
