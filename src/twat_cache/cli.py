"""The `twat-cache` command line: engines, stats, clear, prune, demo and bench.

    twat-cache [--root DIR] engines [--json]
    twat-cache [--root DIR] stats [FOLDER] [--json]
    twat-cache [--root DIR] clear (FOLDER | --all) [--yes] [--json]
    twat-cache [--root DIR] prune [FOLDER] [--max-size SIZE] [--json]
    twat-cache demo
    twat-cache bench [--quick] [BENCH OPTIONS...]

Exit codes: 0 done, 1 an error (an unknown folder, a cache that cannot be opened), 2 a usage
error (a bad option or size). Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from twat_cache.config import CacheConfig, parse_size
from twat_cache.exceptions import CacheError

__all__ = ["main"]

#: The chain each decorator selects from (ucache picks one of them: docs/selection.md).
_DECORATOR_CHAINS = {
    "mcache": "memory",
    "acache": "async",
    "bcache": "disk",
    "fcache": "file",
    "ucache(url=...)": "redis",
}


class UserError(Exception):
    """A mistake of the user's (exit code 1): reported as one line, never a traceback."""


# --- cache folders ----------------------------------------------------------------------


def _root() -> Path:
    from twat_cache.paths import cache_root

    return cache_root()


def _folders(root: Path) -> list[Path]:
    """The cache folders under the root (names starting with '.' are twat-cache's own)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _chosen(root: Path, folder: str | None) -> list[Path]:
    folders = _folders(root)
    if folder is None:
        return folders
    from twat_cache.paths import validate_folder_name

    try:
        validate_folder_name(folder)
    except CacheError as exc:
        raise UserError(str(exc)) from None
    for path in folders:
        if path.name == folder:
            return [path]
    known = ", ".join(p.name for p in folders) or "none"
    raise UserError(f"no cache folder {folder!r} under {root} (folders: {known})")


@contextmanager
def _opened(path: Path, **overrides: Any) -> Iterator[Any]:
    """The engine of a cache folder, opened with the settings its manifest records."""
    from twat_cache.engines.base import RECORD_MANIFESTS, PersistentEngine
    from twat_cache.engines.manager import get_manager

    manifest = PersistentEngine.read_manifest(path)
    if manifest is None:
        raise UserError(
            f"{path.name}: no record of the engine that wrote it (written by an older "
            f"twat-cache, or not a cache folder): remove {path} by hand if you want it gone"
        )
    name = manifest["engine"]
    token = RECORD_MANIFESTS.set(False)  # the folder keeps the settings it was opened with
    try:
        config = CacheConfig(folder_name=path.name, **{**manifest["settings"], **overrides})
        # sweep=False: opening removes nothing (a read command writes nothing, and prune
        # counts everything it removes).
        engine = get_manager().load(name)(config, sweep=False)
    except (CacheError, ValueError, TypeError, OSError) as exc:
        raise UserError(f"{path.name}: the {name} cache cannot be opened: {exc}") from None
    finally:
        RECORD_MANIFESTS.reset(token)
    try:
        yield engine
    finally:
        engine.close()


def _entries(count: int) -> str:
    return f"{count} entry" if count == 1 else f"{count} entries"


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


def _bytes(count: int | None) -> str:
    if count is None:
        return "-"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # not reached: the loop returns at GiB


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


# --- commands ---------------------------------------------------------------------------


def _engines(args: argparse.Namespace) -> int:
    from twat_cache.engines.base import capabilities_of
    from twat_cache.engines.manager import get_manager

    manager = get_manager()
    # Probed in a throwaway root: building a persistent engine creates its folder.
    saved = os.environ.get("TWAT_CACHE_DIR")
    with tempfile.TemporaryDirectory() as probe_root:
        os.environ["TWAT_CACHE_DIR"] = probe_root
        try:
            reasons = manager.available(CacheConfig(folder_name="probe"))
        finally:
            if saved is None:
                del os.environ["TWAT_CACHE_DIR"]
            else:
                os.environ["TWAT_CACHE_DIR"] = saved
    engines: list[dict[str, Any]] = []
    for name in manager.registered():
        try:
            capabilities = capabilities_of(manager.load(name))
            kinds = [
                kind
                for kind, on in (
                    ("persistent", capabilities.persistent),
                    ("shared", capabilities.shared),
                    ("async", capabilities.async_native),
                    ("async-only", not capabilities.sync_api),
                )
                if on
            ] or ["memory"]
        except CacheError:
            kinds = []
        engines.append(
            {
                "name": name,
                "available": reasons[name] is None,
                "reason": reasons[name],
                "kind": kinds,
            }
        )
    chains = {decorator: list(manager.chain(kind)) for decorator, kind in _DECORATOR_CHAINS.items()}
    if args.json:
        print(json.dumps({"engines": engines, "chains": chains}, indent=2))
        return 0
    rows = [
        [e["name"], "yes" if e["available"] else "no", ", ".join(e["kind"]), e["reason"] or ""]
        for e in engines
    ]
    print(_table(["engine", "available", "kind", "why not"], rows))
    print()
    print("chains (first available engine that can serve the configuration wins):")
    for decorator, chain in chains.items():
        print(f"  {decorator:<16} {' -> '.join(chain) or '(none registered)'}")
    print("  ucache           picks one of these from its options (docs/selection.md)")
    return 0


def _folder_stats(path: Path) -> dict[str, Any]:
    from twat_cache.engines.base import PersistentEngine

    manifest = PersistentEngine.read_manifest(path)
    record: dict[str, Any] = {
        "folder": path.name,
        "path": str(path),
        "engine": manifest["engine"] if manifest else None,
        "hits": None,  # hit counters live in each process (f.cache_info()), not on disk
        "misses": None,
    }
    with _opened(path) as engine:
        record.update(engine.stats())
    return record


def _stats(args: argparse.Namespace) -> int:
    root = _root()
    records: list[dict[str, Any]] = []
    errors: list[str] = []
    for path in _chosen(root, args.folder):
        try:
            records.append(_folder_stats(path))
        except UserError as exc:
            if args.folder is not None:
                raise
            errors.append(str(exc))
    if args.json:
        print(json.dumps({"root": str(root), "caches": records, "errors": errors}, indent=2))
    else:
        print(f"cache root: {root}")
        if records:
            rows = [
                [
                    r["folder"],
                    r["engine"],
                    str(r["entries"]),
                    _bytes(r["bytes"]),
                    _when(r["oldest"]),
                    _when(r["newest"]),
                ]
                for r in records
            ]
            print(_table(["folder", "engine", "entries", "on disk", "oldest", "newest"], rows))
        else:
            print("no persistent caches")
        for error in errors:
            print(f"skipped: {error}", file=sys.stderr)
    return 0


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise UserError(f"{question} needs confirmation: pass --yes (stdin is not a terminal)")
    try:
        answer = input(f"{question} [y/N] ").strip().lower()
    except EOFError:  # end of input (Ctrl-D) answers no
        print(file=sys.stderr)
        return False
    return answer in ("y", "yes")


def _clear(args: argparse.Namespace) -> int:
    if args.all == (args.folder is not None):
        raise _Usage("clear needs a FOLDER or --all (not both)")
    root = _root()
    paths = _chosen(root, args.folder)
    if not paths:
        print(json.dumps({"cleared": []}) if args.json else f"no persistent caches in {root}")
        return 0
    names = ", ".join(p.name for p in paths)
    if not args.yes and not _confirm(f"clear every entry of {names} in {root}?"):
        print("nothing cleared", file=sys.stderr)
        return 1
    cleared: list[dict[str, Any]] = []
    errors: list[str] = []
    for path in paths:
        try:
            with _opened(path) as engine:
                try:
                    count = len(engine)
                    engine.clear()
                except Exception as exc:  # a database another process holds past patience
                    raise UserError(f"{path.name}: could not clear: {exc}") from None
        except UserError as exc:
            if args.folder is not None:
                raise
            errors.append(str(exc))
            continue  # every other folder is still cleared
        cleared.append({"folder": path.name, "entries": count})
    if args.json:
        print(json.dumps({"cleared": cleared, "errors": errors}, indent=2))
    else:
        for item in cleared:
            print(f"cleared {item['folder']}: {_entries(item['entries'])}")
    for error in errors:
        print(f"skipped: {error}", file=sys.stderr)
    return 1 if errors else 0  # a folder left uncleared is an error, whatever else went


def _prune(args: argparse.Namespace) -> int:
    root = _root()
    overrides = {} if args.max_size is None else {"maxsize": args.max_size}
    pruned: list[dict[str, Any]] = []
    errors: list[str] = []
    for path in _chosen(root, args.folder):
        try:
            with _opened(path, **overrides) as engine:
                removed = engine.prune()
                pruned.append({"folder": path.name, "removed": removed, "entries": len(engine)})
        except UserError as exc:
            if args.folder is not None:
                raise
            errors.append(str(exc))  # every other folder is still pruned
    if args.json:
        print(json.dumps({"pruned": pruned, "errors": errors}, indent=2))
    elif pruned:
        for item in pruned:
            print(
                f"pruned {item['folder']}: {item['removed']} removed, "
                f"{_entries(item['entries'])} left"
            )
    elif not errors:
        print(f"no persistent caches in {root}")
    for error in errors:
        print(f"skipped: {error}", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from twat_cache._demo import main as demo

    demo()
    return 0


def _bench(args: argparse.Namespace) -> int:
    script = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"
    if not script.is_file():
        raise UserError(
            "the benchmark ships with the source checkout (scripts/bench.py): clone the "
            "repository and run `make bench`"
        )
    command = [sys.executable, str(script), *(["--quick"] if args.quick else []), *args.rest]
    return subprocess.call(command)


# --- parsing ----------------------------------------------------------------------------


class _Usage(Exception):
    """A usage error found after parsing (exit code 2)."""


def _size(text: str) -> Any:
    try:
        size = parse_size(int(text) if text.isdigit() else text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return size


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twat-cache",
        description="Inspect and manage twat-cache's persistent caches.",
    )
    parser.add_argument(
        "--root", help="cache root to work on (default: $TWAT_CACHE_DIR, else the user cache dir)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], help: str) -> Any:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    engines = command("engines", _engines, "every engine, available or not and why; the chains")
    engines.add_argument("--json", action="store_true", help="print JSON")
    stats = command("stats", _stats, "entries, size and age of the persistent caches")
    stats.add_argument("folder", nargs="?", help="one cache folder (default: all)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    clear = command("clear", _clear, "remove every entry of a cache folder, or of all")
    clear.add_argument("folder", nargs="?", help="the cache folder to clear")
    clear.add_argument("--all", action="store_true", help="clear every cache folder")
    clear.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    clear.add_argument("--json", action="store_true", help="print JSON")
    prune = command(
        "prune", _prune, "drop expired entries, enforce size limits, remove orphan files"
    )
    prune.add_argument("folder", nargs="?", help="one cache folder (default: all)")
    prune.add_argument(
        "--max-size", type=_size, help="enforce this bound instead of the recorded one ('500MB')"
    )
    prune.add_argument("--json", action="store_true", help="print JSON")
    command("demo", _demo, "a short tour of the decorators")
    bench = command(
        "bench",
        _bench,
        "the benchmark against functools and peer libraries; other options (--only, --json "
        "PATH...) are passed to scripts/bench.py",
    )
    bench.add_argument("--quick", action="store_true", help="fewer rounds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    # Exits 2 with a one-line message on a usage error. Options `bench` does not know are
    # the benchmark's own: they are passed on; anywhere else they are an error.
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    if args.root:
        if not Path(args.root).expanduser().is_dir():
            print(f"twat-cache: error: no cache root at {args.root}", file=sys.stderr)
            return 1
        os.environ["TWAT_CACHE_DIR"] = args.root
    try:
        result: int = args.run(args)
    except _Usage as exc:
        parser.print_usage(sys.stderr)
        print(f"twat-cache: error: {exc}", file=sys.stderr)
        return 2
    except (UserError, CacheError, OSError) as exc:
        print(f"twat-cache: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("twat-cache: interrupted", file=sys.stderr)
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
