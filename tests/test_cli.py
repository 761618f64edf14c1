"""The `twat-cache` command line, run as real subprocesses against real cache folders.

Every command goes through `python -m twat_cache` (and the installed console script where
noted); the folders are written by cached functions in this process, under the private cache
root the autouse fixture of conftest.py gives each test (inherited by the subprocesses).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from twat_cache import bcache, fcache, ucache
from twat_cache.config import REDIS_URL_ENV
from twat_cache.engines.base import PersistentEngine
from twat_cache.engines.manager import get_manager

MODULE = (sys.executable, "-m", "twat_cache")
#: The console script installed beside this interpreter (the venv's bin/ or Scripts/).
CONSOLE_SCRIPT = shutil.which("twat-cache", path=str(Path(sys.executable).parent))
HAS_KLEPTO = importlib.util.find_spec("klepto") is not None
#: Seconds of slack on a store time: mtimes are nanoseconds read back as a float.
SLACK = 0.01
#: What the tests store for argument 0: big enough for a file of its own in every engine
#: (diskcache keeps values under 32 KiB in its database).
LARGE = b"x" * 100_000
#: The chain each decorator uses, by the kind the engine manager knows it as.
DECORATOR_KINDS = {
    "mcache": "memory",
    "acache": "async",
    "bcache": "disk",
    "fcache": "file",
    "ucache(url=...)": "redis",
}
#: The engine registered by tests/conftest.py in this process only (no subprocess has it).
TEST_ENGINE = "mine"


# --- running the command line -------------------------------------------------------------


@dataclass
class Run:
    """One run of the command line: its exit code, stdout and stderr."""

    code: int
    out: str
    err: str


def cli(*args: str, command: Sequence[str] = MODULE, env: dict[str, str] | None = None) -> Run:
    """Run the command line with `args`, stdin not a terminal; its exit code and output."""
    done = subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=120,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def ok(*args: str) -> Run:
    run = cli(*args)
    assert run.code == 0, run
    assert "Traceback" not in run.err, run.err
    return run


def ok_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json").out)


def assert_error(run: Run, code: int, *needles: str) -> str:
    """`run` exited with `code`, printed nothing on stdout, and its stderr is one error
    line (after argparse's usage, for a usage error) holding every needle; no traceback."""
    assert run.code == code, run
    assert "Traceback" not in run.err, run.err
    assert run.out == ""
    lines = run.err.splitlines()
    if code == 2:  # argparse's usage comes first: one line, or more with indented ones
        assert lines, run.err
        assert lines[0].startswith("usage: twat-cache"), run.err
        lines = [line for line in lines[1:] if not line.startswith(" ")]
    assert len(lines) == 1, run.err
    (line,) = lines
    assert re.match(r"twat-cache( \w+)?: error: ", line), line
    for needle in needles:
        assert needle in line, line
    return line


def answer_prompt(args: Sequence[str], answer: bytes) -> tuple[int, str, bool]:
    """Run the command line on a terminal (a pty for stdin, stdout and stderr) and type
    `answer` at its `[y/N]` prompt; the exit code, the transcript, and whether it asked."""
    import pty

    master, slave = pty.openpty()
    transcript, asked = b"", False
    try:
        with subprocess.Popen([*MODULE, *args], stdin=slave, stdout=slave, stderr=slave) as proc:
            os.close(slave)
            slave = -1
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 1.0)
                if not ready:
                    continue
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: every end of the terminal the child held is closed
                    break
                if not chunk:
                    break
                transcript += chunk
                if not asked and b"[y/N]" in transcript:
                    os.write(master, answer)
                    asked = True
            else:  # the deadline passed: stuck at a prompt never answered; fail, not hang
                proc.kill()
            code = proc.wait(timeout=60)
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    return code, transcript.decode().replace("\r\n", "\n"), asked


def table(text: str) -> list[dict[str, str]]:
    """The rows of a table the command line printed (a header, a line of dashes, rows up to
    a blank line), each by column name; columns are found from the dashes."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("---"))
    spans = [match.span() for match in re.finditer(r"-+", lines[at])]
    names = [lines[at - 1][start:end].strip() for start, end in spans]
    rows = []
    for line in lines[at + 1 :]:
        if not line.strip():
            break
        ends = [end for _, end in spans[:-1]] + [len(line)]
        cells = [line[start:end].strip() for (start, _), end in zip(spans, ends, strict=True)]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


# --- cache folders ------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """A way to make a cache folder: the decorator, its options, the engine it must get."""

    decorator: Callable[..., Any]
    engine: str
    options: dict[str, Any] = field(default_factory=dict)


KINDS = {
    "disk": Kind(bcache, "diskcache"),
    "files": Kind(fcache, "joblib"),
    "universal": Kind(ucache, "diskcache"),
    "klepto_dir": Kind(ucache, "klepto", {"cache_engine": "klepto"}),
    "klepto_sql": Kind(ucache, "klepto", {"cache_engine": "klepto", "use_sql": True}),
}
#: Entries the standard folders (the `caches` fixture) hold, one folder per kind.
ENTRIES = {"disk": 3, "files": 4, "universal": 2, "klepto_dir": 5, "klepto_sql": 2}
#: One kind per persistent engine.
ENGINE_KINDS = {"diskcache": "disk", "joblib": "files", "klepto": "klepto_dir"}


@dataclass
class Cache:
    """A cached function writing a folder: every argument its body ran with, and the
    clock before and after each write of `make`."""

    folder: str
    engine: str
    func: Any
    calls: list[int]
    writes: list[tuple[float, float]]

    def recomputes(self, x: int = 0) -> bool:
        """Call it with `x`: whether the body ran (a miss)."""
        before = len(self.calls)
        self.func(x)
        return len(self.calls) > before


@pytest.fixture(autouse=True)
def _quiet_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Redis server named (redis is then unavailable) and no debug log on stderr."""
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    monkeypatch.delenv("TWAT_CACHE_DEBUG", raising=False)


@pytest.fixture
def root() -> Path:
    """The private cache root of this test (set by conftest.py's autouse fixture)."""
    return Path(os.environ["TWAT_CACHE_DIR"])


@pytest.fixture
def make() -> Iterator[Callable[..., Cache]]:
    """`make(folder, kind, count, **options)`: a cached function of `kind` on `folder`
    with `count` entries written (arguments 0..count-1); closed at teardown."""
    opened: list[Any] = []

    def build(folder: str, kind: str, count: int, **options: Any) -> Cache:
        spec = KINDS[kind]
        if spec.engine == "klepto" and not HAS_KLEPTO:
            pytest.skip("klepto is not installed")
        calls: list[int] = []

        def compute(x: int) -> Any:
            calls.append(x)
            return LARGE if x == 0 else ("value", x)

        func = spec.decorator(folder_name=folder, **spec.options, **options)(compute)
        opened.append(func)
        assert func.cache_engine.name == spec.engine
        writes = []
        for x in range(count):
            before = time.time()
            func(x)
            writes.append((before, time.time()))
        assert len(calls) == count
        return Cache(folder, spec.engine, func, calls, writes)

    yield build
    for func in opened:
        func.cache_engine.close()


@pytest.fixture
def disk(make: Callable[..., Cache]) -> Cache:
    """One bcache folder, "disk", holding 3 entries."""
    return make("disk", "disk", 3)


@pytest.fixture
def caches(make: Callable[..., Cache]) -> dict[str, Cache]:
    """One folder of each kind (named after it), holding `ENTRIES[kind]` entries."""
    kinds = [k for k in KINDS if HAS_KLEPTO or KINDS[k].engine != "klepto"]
    return {kind: make(kind, kind, ENTRIES[kind]) for kind in kinds}


def files_under(folder: Path) -> dict[str, int]:
    """Every regular file under `folder`, by relative path, with its size."""
    return {
        str(path.relative_to(folder)): path.lstat().st_size
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


def entry_files(folder: Path, engine: str) -> list[str]:
    """The files of `folder` that hold entries (not the engine's database itself)."""
    pattern = {
        "diskcache": r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val",
        "joblib": r"[0-9a-f]{32}\.(sig|[0-9a-f]{16}\.(joblib|npy))",
        "klepto": r"klepto/K_[0-9a-f]{40}/output\.json",
    }[engine]
    return sorted(name for name in files_under(folder) if re.fullmatch(pattern, name))


def plant_orphans(folder: Path, engine: str) -> list[Path]:
    """What a writer killed mid-write leaves in a folder of `engine`, two hours old (older
    than any grace an engine gives a live writer); returns the paths planted."""
    if engine == "diskcache":  # a value file no row references
        value = folder / "ee" / "ff" / ("0" * 28 + ".val")
        value.parent.mkdir(mode=0o700, parents=True)
        value.write_bytes(b"left by a killed writer")
        planted = [value]
    elif engine == "joblib":  # a temporary record, and a data file no record names
        name = "a" * 32
        planted = [folder / f".{name}.sig.tmp1234.tmp", folder / f"{name}.{'b' * 16}.joblib"]
        for path in planted:
            path.write_bytes(b"left by a killed writer")
    else:  # klepto's temporary entry directory, and an entry directory without its file
        temporary = folder / "klepto" / "K_.I_killed"
        temporary.mkdir(mode=0o700)
        (temporary / "output.json").write_text("[null, ")
        entry = folder / "klepto" / ("K_" + "c" * 40)
        entry.mkdir(mode=0o700)
        planted = [temporary, entry]
    old = time.time() - 7200
    for path in planted:
        os.utime(path, (old, old))  # klepto ages a directory by its mtime
    return planted


# --- the console script and the module ----------------------------------------------------


def test_the_console_script_is_installed_and_runs_the_same_command_line(disk: Cache) -> None:
    assert CONSOLE_SCRIPT is not None, f"no twat-cache script beside {sys.executable}"
    by_script = cli("stats", "disk", "--json", command=[CONSOLE_SCRIPT])
    assert by_script.code == 0, by_script
    by_module = json.loads(ok("stats", "disk", "--json").out)
    by_script_listing = json.loads(by_script.out)
    for listing in (by_script_listing, by_module):
        del listing["caches"][0]["bytes"]  # every opening of a diskcache database grows its WAL
    assert by_script_listing == by_module
    assert by_module["caches"][0]["entries"] == 3
    # Exit codes come through the script's own sys.exit.
    assert_error(cli("stats", "nope", command=[CONSOLE_SCRIPT]), 1, "'nope'")
    assert_error(cli("clear", command=[CONSOLE_SCRIPT]), 2, "FOLDER or --all")


@pytest.mark.parametrize("args", [[], ["stats", "--bogus"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    run = cli(*args)
    assert run.code == 2, run
    assert run.out == ""
    assert "Traceback" not in run.err
    assert run.err.startswith("usage: twat-cache")


# --- engines ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines_listing(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`twat-cache engines --json`, run once (it probes every engine, which takes a while),
    on a cache root of its own that it must leave empty."""
    probe_root = tmp_path_factory.mktemp("engines_root")
    probe_root.chmod(0o700)
    environment = {**os.environ, "TWAT_CACHE_DIR": str(probe_root)}
    environment.pop(REDIS_URL_ENV, None)
    environment.pop("TWAT_CACHE_DEBUG", None)
    run = cli("engines", "--json", env=environment)
    assert run.code == 0, run
    assert "Traceback" not in run.err
    assert list(probe_root.iterdir()) == []  # engines are probed elsewhere
    listing: dict[str, Any] = json.loads(run.out)
    return listing


def _fresh_manager() -> dict[str, Any]:
    """What a new process's engine manager registers and chains (this process's manager
    also holds the test engine conftest.py registers)."""
    code = (
        "import json\n"
        "from twat_cache.engines.manager import CHAINS, get_manager\n"
        "m = get_manager()\n"
        "print(json.dumps({'registered': m.registered(),\n"
        "                  'chains': {k: list(m.chain(k)) for k in CHAINS}}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    facts: dict[str, Any] = json.loads(done.stdout)
    return facts


def test_engines_json_matches_the_manager(engines_listing: dict[str, Any]) -> None:
    fresh = _fresh_manager()
    assert fresh["registered"] == [n for n in get_manager().registered() if n != TEST_ENGINE]
    engines = engines_listing["engines"]
    assert [e["name"] for e in engines] == fresh["registered"]
    for engine in engines:
        assert isinstance(engine["available"], bool), engine
        if engine["available"]:
            assert engine["reason"] is None, engine
        else:
            assert isinstance(engine["reason"], str), engine
            assert engine["reason"].strip(), engine
    by_name = {e["name"]: e for e in engines}
    for name in ("diskcache", "joblib", "cachetools", "functools"):  # required dependencies
        assert by_name[name]["available"] is True, by_name[name]
    for name in ("diskcache", "joblib"):
        assert "persistent" in by_name[name]["kind"], by_name[name]
    if "redis" in by_name:  # no URL anywhere: unavailable, and the reason says what is missing
        assert by_name["redis"]["available"] is False
        assert "url" in by_name["redis"]["reason"], by_name["redis"]
    expected = {d: fresh["chains"][kind] for d, kind in DECORATOR_KINDS.items()}
    assert engines_listing["chains"] == expected
    assert engines_listing["chains"]["bcache"][0] == "diskcache"
    assert engines_listing["chains"]["fcache"][0] == "joblib"


def test_engines_table_lists_every_engine_and_the_chains(
    root: Path, engines_listing: dict[str, Any]
) -> None:
    listing = engines_listing
    run = ok("engines")
    assert list(root.iterdir()) == []
    rows = table(run.out)
    assert [row["engine"] for row in rows] == [e["name"] for e in listing["engines"]]
    for row, engine in zip(rows, listing["engines"], strict=True):
        assert row["available"] == ("yes" if engine["available"] else "no"), row
        assert row["why not"] == (engine["reason"] or ""), row
        assert row["kind"] == ", ".join(engine["kind"]), row
    redis = [row for row in rows if row["engine"] == "redis"]
    assert not redis or (redis[0]["available"] == "no" and "url" in redis[0]["why not"])
    chains = {}
    for line in run.out.splitlines():
        words = line.split(maxsplit=1)
        if words and words[0] in listing["chains"]:
            chains[words[0]] = words[1].split(" -> ")
    assert chains == listing["chains"]


# --- stats --------------------------------------------------------------------------------


def test_stats_of_an_empty_root(root: Path) -> None:
    assert ok("stats").out == f"cache root: {root}\nno persistent caches\n"
    assert ok_json("stats") == {"root": str(root), "caches": [], "errors": []}


def test_stats_json_lists_every_folder(root: Path, caches: dict[str, Cache]) -> None:
    (root / "plain").mkdir(mode=0o700)  # a directory no engine wrote: skipped, reported
    listing = ok_json("stats")
    assert listing["root"] == str(root)
    records = {record["folder"]: record for record in listing["caches"]}
    assert sorted(records) == sorted(caches)
    for kind, cache in caches.items():
        record = records[kind]
        assert record["path"] == str(root / kind)
        assert record["engine"] == cache.engine, record
        assert record["entries"] == ENTRIES[kind], record
        assert record["bytes"] > 0
    (error,) = listing["errors"]
    assert error.startswith("plain: "), error


def test_stats_table_lists_every_folder_and_skips_a_plain_directory(
    root: Path, caches: dict[str, Cache]
) -> None:
    (root / "plain").mkdir(mode=0o700)
    started = min(cache.writes[0][0] for cache in caches.values())
    run = cli("stats")
    assert run.code == 0, run
    lines = run.out.splitlines()
    assert lines[0] == f"cache root: {root}"
    rows = {row["folder"]: row for row in table(run.out)}
    assert sorted(rows) == sorted(caches)
    for kind, cache in caches.items():
        row = rows[kind]
        assert (row["engine"], row["entries"]) == (cache.engine, str(ENTRIES[kind])), row
        assert re.fullmatch(r"\d+ B|\d+\.\d (KiB|MiB|GiB)", row["on disk"]), row
        for column in ("oldest", "newest"):
            if row[column] == "-":  # an engine that does not know its store times (yet)
                continue
            shown = datetime.fromisoformat(row[column]).timestamp()
            assert started - 1 <= shown <= time.time(), row  # shown to the second
    (skipped,) = run.err.splitlines()
    assert skipped.startswith("skipped: plain: "), run.err
    assert "Traceback" not in run.err


@pytest.mark.parametrize("kind", list(KINDS))
def test_stats_of_one_folder(root: Path, make: Callable[..., Cache], kind: str) -> None:
    cache = make(kind, kind, ENTRIES[kind])
    make("other", "disk", 1)
    listing = ok_json("stats", kind)
    (record,) = listing["caches"]
    assert listing["errors"] == []
    assert {"folder", "engine", "entries", "bytes", "oldest", "newest"} <= set(record)
    assert (record["folder"], record["engine"]) == (kind, cache.engine)
    assert record["entries"] == ENTRIES[kind]
    # Measured after the run: this process keeps its database connections open, so what
    # the run grew (diskcache's WAL) is still there. Every file of the folder counts.
    on_disk = files_under(root / kind)
    assert record["bytes"] == sum(on_disk.values()), on_disk
    assert record["bytes"] > len(LARGE)
    oldest, newest = record["oldest"], record["newest"]
    if oldest is None or newest is None:
        pytest.skip(f"{cache.engine} reports no store times (oldest={oldest}, newest={newest})")
    (first_start, first_end), (last_start, last_end) = cache.writes[0], cache.writes[-1]
    assert first_start - SLACK <= oldest <= first_end + SLACK, (cache.writes, oldest)
    assert last_start - SLACK <= newest <= last_end + SLACK, (cache.writes, newest)
    assert oldest <= newest


def test_stats_table_of_one_folder(root: Path, make: Callable[..., Cache]) -> None:
    make("files", "files", 4)
    make("other", "disk", 1)
    run = ok("stats", "files")
    assert run.out.splitlines()[0] == f"cache root: {root}"
    (row,) = table(run.out)
    assert (row["folder"], row["engine"], row["entries"]) == ("files", "joblib", "4")
    assert run.err == ""


@pytest.mark.parametrize(
    "args", [["stats", "nope", "--json"], ["clear", "nope", "--yes"], ["prune", "nope"]]
)
def test_an_unknown_folder_is_one_error_line(root: Path, disk: Cache, args: list[str]) -> None:
    line = assert_error(cli(*args), 1, "'nope'", str(root))
    assert "disk" in line  # the folders there are, to pick from


@pytest.mark.parametrize("name", ["../x", ".manifests"])
def test_a_bad_folder_name_is_one_error_line(disk: Cache, name: str) -> None:
    assert_error(cli("stats", name), 1, repr(name))


def test_stats_of_a_plain_directory_is_an_error(root: Path, disk: Cache) -> None:
    (root / "plain").mkdir(mode=0o700)
    assert_error(cli("stats", "plain"), 1, "plain", "no record")


# --- clear --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["disk", "files", "klepto_dir", "klepto_sql"])
def test_clear_one_folder(root: Path, caches: dict[str, Cache], kind: str) -> None:
    if kind not in caches:
        pytest.skip("klepto is not installed")
    run = ok("clear", kind, "--yes")
    assert run.out == f"cleared {kind}: {ENTRIES[kind]} entries\n"
    assert run.err == ""
    assert entry_files(root / kind, caches[kind].engine) == []
    for other, cache in caches.items():
        assert cache.recomputes(0) == (other == kind), other


def test_clear_all(root: Path, caches: dict[str, Cache]) -> None:
    report = ok_json("clear", "--all", "--yes")
    cleared = [{"folder": k, "entries": ENTRIES[k]} for k in sorted(caches)]
    assert report == {"cleared": cleared, "errors": []}
    assert all(r["entries"] == 0 for r in ok_json("stats")["caches"])
    for kind, cache in caches.items():
        assert entry_files(root / kind, cache.engine) == [], kind
        assert cache.recomputes(1), kind


@pytest.mark.parametrize("target", [["disk"], ["--all"]])
def test_clear_without_yes_off_a_terminal_clears_nothing(
    make: Callable[..., Cache], target: list[str]
) -> None:
    caches = [make("disk", "disk", 3), make("files", "files", 2)]
    assert_error(cli("clear", *target), 1, "--yes")
    for cache in caches:
        assert not cache.recomputes(0), cache.folder


@pytest.mark.parametrize("args", [["--yes"], ["disk", "--all", "--yes"]])
def test_clear_needs_a_folder_or_all_but_not_both(disk: Cache, args: list[str]) -> None:
    assert_error(cli("clear", *args), 2, "FOLDER or --all")
    assert not disk.recomputes(0)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")
@pytest.mark.parametrize(("answer", "cleared"), [(b"y\n", True), (b"n\n", False), (b"\n", False)])
def test_clear_asks_on_a_terminal(
    root: Path, make: Callable[..., Cache], answer: bytes, cleared: bool
) -> None:
    caches = {"disk": make("disk", "disk", 3), "files": make("files", "files", 1)}
    code, transcript, asked = answer_prompt(["clear", "disk"], answer)
    assert asked, transcript
    assert transcript.startswith(f"clear every entry of disk in {root}? [y/N] "), transcript
    assert "Traceback" not in transcript
    if cleared:
        assert code == 0, transcript
        assert transcript.endswith("cleared disk: 3 entries\n"), transcript
    else:
        assert code == 1, transcript
        assert transcript.endswith("nothing cleared\n"), transcript
    assert caches["disk"].recomputes(0) == cleared
    assert not caches["files"].recomputes(0)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")
def test_clear_end_of_input_at_the_prompt_clears_nothing(disk: Cache) -> None:
    code, transcript, asked = answer_prompt(["clear", "disk"], b"\x04")  # Ctrl-D: EOF
    assert asked, transcript
    assert "Traceback" not in transcript, transcript
    assert code == 1, transcript
    assert transcript.endswith("nothing cleared\n"), transcript
    assert not disk.recomputes(0)


@pytest.mark.parametrize("args", [["clear", "--all", "--yes"], ["prune"]])
def test_clear_all_and_prune_get_past_a_plain_directory(
    root: Path, make: Callable[..., Cache], args: list[str]
) -> None:
    (root / "a_plain").mkdir(mode=0o700)  # sorts first
    cache = make("disk", "disk", 2)
    (orphan,) = plant_orphans(root / "disk", "diskcache")
    run = cli(*args)
    assert "Traceback" not in run.err
    assert "a_plain" in run.err, run.err
    if args[0] == "clear":
        assert cache.recomputes(0)
    else:
        assert not orphan.exists()


# --- prune --------------------------------------------------------------------------------


def test_prune_drops_expired_entries(root: Path, make: Callable[..., Cache]) -> None:
    kinds = ["disk", "files", *(["klepto_dir"] if HAS_KLEPTO else [])]
    expiring = [make(f"{kind}_ttl", kind, 3, ttl="1s") for kind in kinds]
    kept = make("disk_kept", "disk", 2)
    for cache in expiring:
        assert len(entry_files(root / cache.folder, cache.engine)) > 0
    time.sleep(max(0.0, max(c.writes[-1][1] for c in expiring) + 1.1 - time.time()))
    report = {item["folder"]: item for item in ok_json("prune")["pruned"]}
    assert sorted(report) == sorted([*(c.folder for c in expiring), kept.folder])
    for cache in expiring:
        assert report[cache.folder]["entries"] == 0, report[cache.folder]
        assert entry_files(root / cache.folder, cache.engine) == [], cache.folder
    # diskcache's opening leaves expired entries for prune: it counts every one.
    assert report["disk_ttl"]["removed"] == 3
    assert report["disk_kept"] == {"folder": "disk_kept", "removed": 0, "entries": 2}
    assert not kept.recomputes(0)
    assert not kept.recomputes(1)
    assert all(
        r["entries"] == (2 if r["folder"] == "disk_kept" else 0) for r in ok_json("stats")["caches"]
    )


@pytest.mark.parametrize("engine", list(ENGINE_KINDS))
def test_prune_removes_orphan_files(root: Path, make: Callable[..., Cache], engine: str) -> None:
    cache = make("tools", ENGINE_KINDS[engine], 3)
    folder = root / "tools"
    entries = entry_files(folder, engine)
    planted = plant_orphans(folder, engine)
    bystander = folder / "notes.txt"  # not the engine's: never removed
    bystander.write_text("mine")
    os.utime(bystander, (time.time() - 7200,) * 2)
    (item,) = ok_json("prune", "tools")["pruned"]
    assert item["entries"] == 3
    for path in planted:
        assert not path.exists(), path
    assert bystander.read_text() == "mine"
    assert entry_files(folder, engine) == entries
    assert not any(cache.recomputes(x) for x in range(3))


@pytest.mark.parametrize(
    "engine",
    [
        "diskcache",
        "joblib",
        "klepto",
    ],
)
def test_stats_writes_nothing_and_prune_counts_what_it_removes(
    root: Path, make: Callable[..., Cache], engine: str
) -> None:
    cache = make("tools", ENGINE_KINDS[engine], 2, ttl="1s")
    folder = root / "tools"
    planted = plant_orphans(folder, engine)
    time.sleep(max(0.0, cache.writes[-1][1] + 1.1 - time.time()))
    before = sorted(files_under(folder))
    (record,) = ok_json("stats", "tools")["caches"]
    assert record["entries"] == 0  # expired entries are not counted...
    assert sorted(files_under(folder)) == before  # ...nor removed by a read command
    (item,) = ok_json("prune", "tools")["pruned"]
    assert item == {"folder": "tools", "removed": 2 + len(planted), "entries": 0}
    assert entry_files(folder, engine) == []


def test_prune_max_size_is_accepted(disk: Cache) -> None:
    run = ok("prune", "disk", "--max-size", "500MB")
    assert run.out == "pruned disk: 0 removed, 3 entries left\n"
    assert not any(disk.recomputes(x) for x in range(3))


def test_prune_max_size_in_entries_evicts_the_oldest(disk: Cache) -> None:
    (item,) = ok_json("prune", "disk", "--max-size", "2")["pruned"]
    assert item == {"folder": "disk", "removed": 1, "entries": 2}
    cache = disk  # bcache without a ttl evicts the oldest stored first
    assert not cache.recomputes(1)
    assert not cache.recomputes(2)
    assert cache.recomputes(0)


def test_prune_max_size_is_not_recorded(root: Path, disk: Cache) -> None:
    manifest = PersistentEngine.manifest_path(root / "disk")
    recorded = manifest.read_text()
    ok("prune", "disk", "--max-size", "500MB")
    assert manifest.read_text() == recorded


@pytest.mark.parametrize("size", ["12QB", "-5"])
def test_prune_refuses_a_bad_size(disk: Cache, size: str) -> None:
    assert_error(cli("prune", "--max-size", size), 2, f"'{size}'", "--max-size")
    assert not disk.recomputes(0)


# --- --root -------------------------------------------------------------------------------


def test_root_option_overrides_the_environment(root: Path, tmp_path: Path, disk: Cache) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    pointed_elsewhere = {**os.environ, "TWAT_CACHE_DIR": str(elsewhere)}
    run = cli("--root", str(root), "stats", "--json", env=pointed_elsewhere)
    assert run.code == 0, run
    listing = json.loads(run.out)
    assert listing["root"] == str(root)
    assert [(r["folder"], r["entries"]) for r in listing["caches"]] == [("disk", 3)]
    assert ok("--root", str(elsewhere), "stats").out == (
        f"cache root: {elsewhere}\nno persistent caches\n"
    )
    run = cli("--root", str(elsewhere), "clear", "disk", "--yes")
    assert_error(run, 1, "'disk'", str(elsewhere))
    assert not disk.recomputes(0)


# --- demo and bench -----------------------------------------------------------------------


def test_demo_runs() -> None:
    run = ok("demo")
    engines = {row["decorator"]: row["engine"] for row in table(run.out)}
    assert engines["bcache"] == "diskcache"
    assert engines["fcache"] == "joblib"
    assert engines["mcache"] in {"cachebox", "cachetools", "functools"}


def test_bench_passes_its_options_to_the_benchmark() -> None:
    # An unknown workload: the benchmark's own parser refuses it before measuring anything.
    run = cli("bench", "--only", "nonexistent")
    assert run.code == 2, run
    assert run.out == ""
    assert "Traceback" not in run.err
    assert "error: unknown workload(s) nonexistent; known: " in run.err, run.err
    assert "twat-cache" not in run.err  # the benchmark's message, not the command line's
