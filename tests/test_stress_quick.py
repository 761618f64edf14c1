"""The reliability harness's reduced profile (`scripts/stress/run.py --quick`) in `make test`:
every scenario on every persistent engine, every figure at its target.

The harness runs in a subprocess of its own (it starts processes, kills them, starts a
redis-server when the binary is there); on a miss the test shows its table. Under
``CI=true`` the redis rows must have run, not been skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "scripts" / "stress" / "run.py"


@pytest.mark.slow
@pytest.mark.timeout(600)  # a guard against a hang; the quick profile takes well under a minute
def test_quick_profile_meets_every_target(tmp_path: Path) -> None:
    report = tmp_path / "stress.json"
    run = subprocess.run(
        [sys.executable, str(HARNESS), "--quick", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=540,
        # The harness gives every scenario a cache root of its own.
        env={k: v for k, v in os.environ.items() if k != "TWAT_CACHE_DIR"},
    )
    shown = f"{run.stdout}\n--- stderr (last lines) ---\n{run.stderr[-4000:]}"
    assert report.exists(), shown
    scenarios = json.loads(report.read_text())["scenarios"]
    rows = [row for scenario in scenarios for row in scenario["rows"]]
    assert {s["name"] for s in scenarios} == {
        "integrity",
        "crash",
        "corruption",
        "tampering",
        "collisions",
        "growth",
        "outage",
        "stampede",
        "permissions",
        "differential",
        "boundaries",
        "forking",
        "interrupts",
        "cancellation",
        "bursts",
        "credentials",
        "names",
        "leaks",
        "deleted",
        "locked",
        "fbound",
    }, shown
    missed = sorted(
        f"{r['scenario']} / {r['engine']}: {r['figure']}" for r in rows if r["status"] == "MISS"
    )
    assert not missed, "missed their target:\n" + "\n".join(missed) + "\n\n" + shown
    if os.environ.get("CI") == "true":
        skipped = [
            f"{r['scenario']} / {r['engine']}: {r['note']}" for r in rows if r["status"] == "SKIP"
        ]
        assert not skipped, (
            "CI=true, and rows were skipped:\n" + "\n".join(skipped) + "\n\n" + shown
        )
    assert run.returncode == 0, shown
