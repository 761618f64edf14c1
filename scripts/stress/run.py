#!/usr/bin/env python3
"""`make stress`: the reliability and security harness of twat-cache.

    .venv/bin/python scripts/stress/run.py [--quick] [--only NAME[,NAME]] [--json PATH]
                                           [--engines a,b] [--seed N] [--keep]

Runs each scenario (integrity, crash, corruption, tampering, collisions, growth, outage,
stampede, permissions, differential) on every persistent engine it applies to (diskcache,
joblib, klepto, redis; "memory" names the in-process rows of the collision, growth and
differential scenarios), each scenario in a child process of its own, against a fresh
cache root. Real processes, real SIGKILL, real files and a real redis-server, which the
harness starts on a free port when the `redis-server` binary is on PATH; without it the
redis rows say "skipped: no redis-server", and under CI=true that fails the run.

Prints one table (scenario, engine, figure, measured, target, PASS/MISS) and the runtime of
each scenario; `--json` writes every figure with the machine and the versions. `--quick` is
the reduced profile `make test` runs (seconds, not minutes): the same figures and targets
on smaller numbers. Exit code: 0 when every figure is at target, 1 when one is not (or a
scenario failed to run), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata as metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stress.common import ENGINES, RESULT_MARK, child_command, child_env
from stress.report import table, write_page
from stress.servers import RedisServer, private_server, redis_binary

SCENARIOS = (
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
)
#: Scenarios that need the shared redis-server (outage starts servers of its own).
_ON_SERVER = {
    "integrity",
    "crash",
    "corruption",
    "tampering",
    "growth",
    "stampede",
    "permissions",
    "differential",
    "boundaries",
    "forking",
    "interrupts",
    "cancellation",
    "bursts",
    "names",
    "leaks",
}
#: Seconds one scenario may run before it is stopped and reported as failed.
TIMEOUT = {"full": 4 * 3600.0, "quick": 120.0}
NO_REDIS = "skipped: no redis-server"


def _names(text: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}"
        )
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py", description="twat-cache reliability and security harness (make stress)"
    )
    parser.add_argument("--quick", action="store_true", help="the reduced profile (seconds)")
    parser.add_argument(
        "--only",
        type=lambda text: _names(text, SCENARIOS, "scenario"),
        help=f"scenarios to run, comma-separated ({', '.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--engines",
        type=lambda text: _names(text, ENGINES, "engine"),
        help=f"engines to run on, comma-separated ({', '.join(ENGINES)})",
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--seed", type=int, default=20240607, help="random seed")
    parser.add_argument("--keep", action="store_true", help="keep the cache roots (printed)")
    parser.add_argument(
        "--markdown",
        type=Path,
        help="rewrite the figures section of this page (docs/reliability.md) from the results",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        help="run nothing: print the table (and write --markdown) from an earlier --json file",
    )
    return parser


def _machine() -> dict[str, Any]:
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpu_count": os.cpu_count(),
        "cpu_usable": len(affinity(0)) if affinity else None,
        "memory_bytes": _memory(),
        "filesystem": _filesystem(Path(tempfile.gettempdir())),
    }


def _memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _filesystem(path: Path) -> str | None:
    try:
        out = subprocess.run(
            ["df", "-T", str(path)], capture_output=True, text=True, timeout=10, check=True
        ).stdout.splitlines()
        return out[-1].split()[1]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _source() -> dict[str, Any]:
    """The commit the harness ran on, and whether the tree had changes on top of it."""
    top = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=top, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain"], cwd=top, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "changes": None}
    return {"commit": commit or None, "changes": bool(changed)}


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for dist in (
        "twat-cache",
        "diskcache",
        "joblib",
        "klepto",
        "redis",
        "cachebox",
        "cachetools",
        "numpy",
        "pydantic",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    binary = redis_binary()
    if binary is not None:
        try:
            versions["redis-server"] = subprocess.run(
                [binary, "--version"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            versions["redis-server"] = None
    return versions


def _run_scenario(
    name: str, arguments: dict[str, Any], cache_root: Path, timeout: float
) -> list[dict[str, Any]]:
    """Run one scenario in a child process; its progress lines are passed through."""
    cache_root.mkdir(mode=0o700)
    output = cache_root.parent / f"{name}.out"
    with output.open("w+") as stdout:
        process = subprocess.Popen(
            child_command(name, "main", arguments),
            stdout=stdout,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=child_env(TWAT_CACHE_DIR=str(cache_root)),
        )
        tail: deque[str] = deque(maxlen=60)

        def relay() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                tail.append(line)
                sys.stderr.write(line)
                sys.stderr.flush()

        relaying = threading.Thread(target=relay, daemon=True)
        relaying.start()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return [_failure(name, f"ran past {timeout:.0f} s and was stopped", tail)]
        finally:
            relaying.join(5)
        stdout.seek(0)
        out = stdout.read()
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARK):
            rows: list[dict[str, Any]] = json.loads(line[len(RESULT_MARK) :])
            return rows
    return [_failure(name, f"exited {process.returncode} without a result", tail)]


def _failure(name: str, what: str, tail: deque[str]) -> dict[str, Any]:
    text = "".join(tail)[-4000:]
    return {
        "scenario": name,
        "engine": "-",
        "figure": "scenario ran",
        "measured": None,
        "shown": what,
        "target": "runs",
        "status": "MISS",
        "note": "",
        "details": {"stderr": text},
    }


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error
    if args.markdown is not None and not args.markdown.is_file():
        parser.error(f"--markdown {args.markdown}: no such page")
    if args.from_json is not None:
        try:
            document = json.loads(args.from_json.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--from-json {args.from_json}: {exc}")
        print(table([row for s in document["scenarios"] for row in s["rows"]]))
        if args.markdown is not None:
            write_page(str(args.markdown), document)
        return 0 if document["ok"] else 1
    profile = "quick" if args.quick else "full"
    scenarios = args.only or list(SCENARIOS)
    engines = args.engines or list(ENGINES)
    ci = os.environ.get("CI") == "true"
    run_dir = Path(tempfile.mkdtemp(prefix="twat-stress-"))
    server: RedisServer | None = None
    redis_note = None
    stack = contextlib.ExitStack()
    if "redis" in engines and any(s in _ON_SERVER for s in scenarios):
        if redis_binary() is None:
            redis_note = NO_REDIS
        else:
            server = stack.enter_context(private_server())
    started = time.time()
    results: list[dict[str, Any]] = []
    try:
        for name in scenarios:
            if server is not None:
                server.flushall()
            arguments = {
                "profile": profile,
                "engines": engines,
                "redis_url": server.url if server is not None else None,
                "seed": args.seed,
            }
            print(f"== {name} ({profile})", file=sys.stderr, flush=True)
            began = time.monotonic()
            rows = _run_scenario(name, arguments, run_dir / name, TIMEOUT[profile])
            results.append({"name": name, "seconds": time.monotonic() - began, "rows": rows})
    finally:
        stack.close()
        if args.keep:
            print(f"cache roots kept in {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    rows = [row for result in results for row in result["rows"]]
    failed = [r for r in rows if r["status"] == "MISS"]
    skipped_under_ci = [r for r in rows if r["status"] == "SKIP" and ci]
    print()
    print(table(rows))
    print()
    print(
        "runtime: "
        + ", ".join(f"{r['name']} {r['seconds']:.1f} s" for r in results)
        + f"; total {time.time() - started:.1f} s ({profile} profile)"
    )
    if redis_note and not ci:
        print(f"note: redis rows {redis_note} (apt-get install redis-server to run them)")
    if skipped_under_ci:
        print(f"FAIL: CI=true and {len(skipped_under_ci)} rows were skipped ({NO_REDIS})")
    ok = not failed and not skipped_under_ci
    print("all figures at target" if ok else f"{len(failed)} figures missed their target")
    document = {
        "harness": "scripts/stress/run.py",
        "profile": profile,
        "seed": args.seed,
        "started": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "seconds": round(time.time() - started, 1),
        "ok": ok,
        "source": _source(),
        "machine": _machine(),
        "versions": _versions(),
        "scenarios": results,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=1, default=str) + "\n")
    if args.markdown is not None:
        write_page(str(args.markdown), document)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
