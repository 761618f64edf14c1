"""Every cache returns exactly what the uncached function returns, over random call sequences."""

from __future__ import annotations

import pytest

from _differential import ENGINES, Engine, check

#: Generated scripts per engine, after the script of every pair (about 10 to 40 calls each):
#: about 20 s for the whole file on 2 cores.
EXAMPLES = 150


@pytest.mark.parametrize(
    "engine",
    [
        pytest.param(engine, id=engine.key, marks=[pytest.mark.redis] if engine.server else [])
        for engine in ENGINES
    ],
)
def test_cached_equals_uncached(engine: Engine, request: pytest.FixtureRequest) -> None:
    """Random calls (twins of each argument next to it: 0.0 and -0.0, an OrderedDict in two
    orders, one instant in two time zones...) through `engine` return what the function
    returns, and some of them are hits, so the cache really served results."""
    url = request.getfixturevalue("redis_url") if engine.server else None
    tally = check(engine, url, EXAMPLES, strict=True)
    assert tally.mismatches == 0
    assert tally.hits > 0, f"{engine.label} never hit in {tally.calls} calls"
