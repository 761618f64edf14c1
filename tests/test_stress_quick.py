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

_SYMLINKS = "planted symlinks followed (outside read or written)"
#: Figures known to miss their target, each an open bug (issue 7): the disk engines follow
#: a symlink planted inside their private folder (database, value, record or entry files,
#: and the manifest). Only the cache's owner can plant one there (folders are 0700).
KNOWN_MISSES = {("permissions", engine, _SYMLINKS) for engine in ("diskcache", "joblib", "klepto")}


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
    }, shown
    missed = {(r["scenario"], r["engine"], r["figure"]) for r in rows if r["status"] == "MISS"}
    # Exactly the known misses, no more and no fewer: a new miss fails, and so does a fix
    # (then its entry leaves KNOWN_MISSES, as a strict xfail would).
    assert missed == KNOWN_MISSES, (
        f"new misses: {sorted(missed - KNOWN_MISSES)}\n"
        f"fixed (remove from KNOWN_MISSES): {sorted(KNOWN_MISSES - missed)}\n\n{shown}"
    )
    if os.environ.get("CI") == "true":
        skipped = [
            f"{r['scenario']} / {r['engine']}: {r['note']}" for r in rows if r["status"] == "SKIP"
        ]
        assert not skipped, (
            "CI=true, and rows were skipped:\n" + "\n".join(skipped) + "\n\n" + shown
        )
    assert run.returncode == (1 if KNOWN_MISSES else 0), shown
