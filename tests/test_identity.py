"""Function identity: which decorated callables share a persistent store (issue 12)."""

from __future__ import annotations

import asyncio
import builtins
import functools
import inspect
import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from twat_cache import MISS, acache, bcache, mcache
from twat_cache.exceptions import ConfigurationError, KeyBuildError


def run_python(*args: str, seed: str = "0", env: dict[str, str] | None = None) -> Any:
    """Run a fresh interpreter (warnings are errors there too) and decode the JSON it
    prints last. The cache root is inherited: conftest points TWAT_CACHE_DIR at the test's."""
    done = subprocess.run(
        [sys.executable, "-W", "error", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


# --- module-level callables (a persistent identity names them) ----------------------------


def power(base: int, exp: int) -> int:
    return int(base**exp)


def increment(x: int) -> int:
    return x + 1


def decrement(x: int) -> int:
    return x - 1


def make_scaled(decorate: Callable[[Any], Any], k: int) -> Any:
    """A factory of closures: each `scaled` has the same qualname, its own `k`."""

    @decorate
    def scaled(x: int) -> int:
        return x * k

    return scaled


def make_applier(decorate: Callable[[Any], Any], fn: Callable[[int], int]) -> Any:
    """Closures that differ only by the function they captured."""

    @decorate
    def apply(x: int) -> int:
        return fn(x)

    return apply


class Scaler:
    """A callable instance whose state (`k`) decides its results."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, x: int) -> int:
        return x * self.k


class Guarded:
    """A callable instance whose state holds a lock: no stable encoding exists for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0

    def __call__(self, x: int) -> int:
        with self.lock:
            self.calls += 1
        return x + 1


def logged(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A plain `functools.wraps` decorator: every wrapper has the same code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


# --- 1. identity in persistent and remote stores ------------------------------------------


def test_two_lambdas_never_share_entries(persist: Callable[..., Any]) -> None:
    double = persist()(lambda x: x * 2)
    triple = persist()(lambda x: x * 3)
    assert (double(5), triple(5)) == (10, 15)
    assert (double(5), triple(5)) == (10, 15)
    assert double.cache_info().hits == triple.cache_info().hits == 1


def test_two_lambdas_in_one_folder_never_share_entries(persist: Callable[..., Any]) -> None:
    double = persist("lambdas")(lambda x: x * 2)
    triple = persist("lambdas")(lambda x: x * 3)
    assert (double(5), triple(5)) == (10, 15)


def test_closures_of_one_factory_never_share_entries(persist: Callable[..., Any]) -> None:
    twice = make_scaled(persist("factory"), 2)
    thrice = make_scaled(persist("factory"), 3)
    assert (twice(1), thrice(1)) == (2, 3)
    assert (twice(1), thrice(1)) == (2, 3)
    assert twice.cache_info().hits == thrice.cache_info().hits == 1


def test_closures_capturing_different_functions_never_share(persist: Callable[..., Any]) -> None:
    up = make_applier(persist("appliers"), increment)
    down = make_applier(persist("appliers"), decrement)
    assert (up(10), down(10)) == (11, 9)


def test_one_closure_recreated_shares_its_entries(persist: Callable[..., Any]) -> None:
    """The same closure built twice (same code, same captured value) is one function."""
    first = make_scaled(persist("factory"), 4)
    assert first(2) == 8
    again = make_scaled(persist("factory"), 4)
    assert again(2) == 8
    assert again.cache_info().hits == 1


@pytest.mark.parametrize(
    ("left", "right", "args", "expected"),
    [
        pytest.param(
            functools.partial(power, 3), functools.partial(power, 2), (3,), (27, 8), id="args"
        ),
        pytest.param(
            functools.partial(power, exp=3),
            functools.partial(power, exp=2),
            (2,),
            (8, 4),
            id="keywords",
        ),
        pytest.param(
            functools.partial(increment), functools.partial(decrement), (5,), (6, 4), id="func"
        ),
    ],
)
def test_partials_in_one_folder_never_share_entries(
    persist: Callable[..., Any], left: Any, right: Any, args: Any, expected: Any
) -> None:
    cached_left = persist("partials")(left)
    cached_right = persist("partials")(right)
    assert (cached_left(*args), cached_right(*args)) == expected
    assert (cached_left(*args), cached_right(*args)) == expected
    assert cached_left.cache_info().hits == cached_right.cache_info().hits == 1


def test_callable_instances_with_different_state_never_share(
    persist: Callable[..., Any],
) -> None:
    twice = persist("instances")(Scaler(2))
    thrice = persist("instances")(Scaler(3))
    assert (twice(5), thrice(5)) == (10, 15)
    assert (twice(5), thrice(5)) == (10, 15)
    assert twice.cache_info().hits == thrice.cache_info().hits == 1


def test_an_instance_with_unencodable_state_is_refused_at_decoration(
    persist: Callable[..., Any],
) -> None:
    with pytest.raises(ConfigurationError, match=r"version="):
        persist("guarded")(Guarded())


def test_an_instance_with_unencodable_state_works_with_a_version(
    persist: Callable[..., Any],
) -> None:
    guarded = Guarded()
    cached = persist("guarded", version="1")(guarded)
    assert (cached(1), cached(1)) == (2, 2)
    assert guarded.calls == 1
    assert cached.cache_info().hits == 1


def _unencodable(kind: str) -> Any:
    if kind == "object-holding-a-lock":
        return Guarded()
    return (i for i in range(3))  # a generator


@pytest.mark.parametrize("kind", ["object-holding-a-lock", "generator"])
def test_a_closure_capturing_an_unencodable_value_is_refused_naming_it(
    persist: Callable[..., Any], kind: str
) -> None:
    shared_resource = _unencodable(kind)

    def guarded(x: int) -> tuple[int, Any]:
        return x + 1, shared_resource

    with pytest.raises(ConfigurationError, match="shared_resource"):
        persist("closures")(guarded)


@pytest.mark.parametrize("make", [threading.Lock, threading.RLock, threading.Event])
def test_a_closure_capturing_a_lock_is_identified_by_its_type(
    persist: Callable[..., Any], make: Callable[[], Any]
) -> None:
    # A lock coordinates threads; its state is not what the function computes.
    guard = make()
    calls: list[int] = []

    def guarded(x: int) -> int:
        calls.append(x)
        return x + 1 if guard else -1

    cached = persist("locked")(guarded)
    assert (cached(1), cached(1)) == (2, 2)
    assert calls == [1]


def test_a_recursive_closure_decorates_and_caches(persist: Callable[..., Any]) -> None:
    calls: list[int] = []

    @persist("recursive")
    def factorial(n: int) -> int:
        calls.append(n)
        return 1 if n <= 1 else n * factorial(n - 1)

    assert factorial(5) == 120
    assert calls == [5, 4, 3, 2, 1]
    assert factorial(5) == 120
    assert calls == [5, 4, 3, 2, 1]
    assert factorial(6) == 720
    assert calls == [5, 4, 3, 2, 1, 6]  # 5! is a hit inside the computation of 6!


@pytest.mark.parametrize("kind", ["named", "lambdas", "closures"])
def test_functions_behind_one_wraps_decorator_never_share(
    persist: Callable[..., Any], kind: str
) -> None:
    """`wrapper` has the same code (and, through `wraps`, maybe the same qualname) for every
    function it wraps: only the function it captured tells them apart."""
    if kind == "named":

        def double(x: int) -> int:
            return x * 2

        def triple(x: int) -> int:
            return x * 3

        inner = [double, triple]
    elif kind == "lambdas":
        inner = [lambda x: x * 2, lambda x: x * 3]
    else:
        inner = [make_scaled(lambda f: f, 2), make_scaled(lambda f: f, 3)]
    first = persist("wrapped")(logged(inner[0]))
    second = persist("wrapped")(logged(inner[1]))
    assert (first(5), second(5)) == (10, 15)
    assert (first(5), second(5)) == (10, 15)


# --- 1. identity across processes ---------------------------------------------------------

DEFAULTS_SCRIPT = """
import functools, json
from twat_cache import bcache

calls = []

def power(base, exp):
    calls.append(["power", base, exp])
    return base ** exp

class Scaler:
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        calls.append(["scaler", self.k, x])
        return x * self.k

cube = bcache(functools.partial(power, exp=3))
triple = bcache(Scaler(3))
results = [cube(2), triple(2)]
print(json.dumps({
    "folders": [cube.cache_parameters()["folder_name"],
                triple.cache_parameters()["folder_name"]],
    "results": results,
    "calls": calls,
    "hits": [cube.cache_info().hits, triple.cache_info().hits],
}))
"""


def test_partials_and_instances_get_one_default_folder_in_every_process(
    tmp_path: Path,
) -> None:
    script = tmp_path / "defaults.py"
    script.write_text(DEFAULTS_SCRIPT)
    first = run_python(str(script), seed="1")
    second = run_python(str(script), seed="2")
    for folder in first["folders"]:
        assert "0x" not in folder, f"a memory address in the default folder {folder!r}"
    assert second["folders"] == first["folders"]
    assert first["results"] == second["results"] == [8, 6]
    assert first["calls"] == [["power", 2, 3], ["scaler", 3, 2]]
    assert second["calls"] == [], "the second process missed what the first stored"
    assert second["hits"] == [1, 1]
    root = Path(os.environ["TWAT_CACHE_DIR"])
    folders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert folders == set(first["folders"]), "a run left a folder of its own behind"


LOADER_SCRIPT = """
import json
from twat_cache import bcache

calls = []

@bcache{folder}
def load(name):
    calls.append(name)
    return "{label} data for " + name

value = load("x")
print(json.dumps({{"value": value, "calls": calls, "hits": load.cache_info().hits}}))
"""


@pytest.mark.parametrize("folder", ["", '("data")'], ids=["default-folder", "shared-folder"])
def test_two_scripts_run_as_main_never_share_entries(tmp_path: Path, folder: str) -> None:
    for label in ("train", "evaluate"):
        code = LOADER_SCRIPT.format(folder=folder, label=label.upper())
        (tmp_path / f"{label}.py").write_text(code)
    train = run_python(str(tmp_path / "train.py"))
    assert train == {"value": "TRAIN data for x", "calls": ["x"], "hits": 0}
    evaluate = run_python(str(tmp_path / "evaluate.py"))
    assert evaluate["value"] == "EVALUATE data for x", "evaluate.py read train.py's entry"
    assert evaluate["calls"] == ["x"]
    again = run_python(str(tmp_path / "train.py"), seed="3")  # persistence still works
    assert again == {"value": "TRAIN data for x", "calls": [], "hits": 1}


# Blocks of a module edited between two runs: (first version, second version). The blocks
# before "moved" keep their line count, so only "comment" (one line longer) and "moved"
# (pushed down) change line numbers.
EDITS: dict[str, tuple[str, str]] = {
    "body_operator": (
        "def body_operator(x):\n    calls.append('body_operator')\n    return x + 1\n",
        "def body_operator(x):\n    calls.append('body_operator')\n    return x - 1\n",
    ),
    "body_constant": (
        "def body_constant(x):\n    calls.append('body_constant')\n    return x + 1\n",
        "def body_constant(x):\n    calls.append('body_constant')\n    return x + 2\n",
    ),
    "body_name": (
        "def body_name(x):\n    calls.append('body_name')\n    return abs(x)\n",
        "def body_name(x):\n    calls.append('body_name')\n    return int(x)\n",
    ),
    "body_nested": (
        "def body_nested(x):\n    calls.append('body_nested')\n"
        "    return sorted([x, 2], key=lambda v: v)\n",
        "def body_nested(x):\n    calls.append('body_nested')\n"
        "    return sorted([x, 2], key=lambda v: -v)\n",
    ),
    "pinned": (
        "@bcache(version='1')\ndef pinned(x):\n    calls.append('pinned')\n    return x + 1\n",
        "@bcache(version='1')\ndef pinned(x):\n    calls.append('pinned')\n    return x + 2\n",
    ),
    "docstring": (
        'def docstring(x):\n    """The first docstring."""\n'
        "    calls.append('docstring')\n    return x + 1\n",
        'def docstring(x):\n    """Another docstring, edited since."""\n'
        "    calls.append('docstring')\n    return x + 1\n",
    ),
    "comment": (
        "def comment(x):\n    # one comment\n    calls.append('comment')\n    return x + 1\n",
        "def comment(x):\n    # another comment,\n    # now on two lines\n"
        "    calls.append('comment')\n    return x + 1\n",
    ),
    "moved": (
        "def moved(x):\n    calls.append('moved')\n    return x + 1\n",
        "\n\n# moved down by this comment\n\n\n"
        "def moved(x):\n    calls.append('moved')\n    return x + 1\n",
    ),
}

EDITED_RUNNER = """
import json
import edited

results = {name: getattr(edited, name)(1) for name in edited.NAMES}
print(json.dumps({"results": results, "calls": edited.calls}))
"""


def _edited_module(version: int) -> str:
    blocks = []
    for versions in EDITS.values():
        block = versions[version]
        if "@bcache" not in block:
            block = block.replace("def ", "@bcache\ndef ", 1)
        blocks.append(block)
    header = f"from twat_cache import bcache\n\nNAMES = {list(EDITS)!r}\ncalls = []\n\n"
    return header + "\n\n".join(blocks)


@pytest.fixture(scope="module")
def edit_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """One module run before and after its edits, in two processes, on one cache root."""
    root = tmp_path_factory.mktemp("edit_root")
    root.chmod(0o700)
    source = tmp_path_factory.mktemp("edit_source")
    (source / "runner.py").write_text(EDITED_RUNNER)
    runs = []
    for version in (0, 1):
        (source / "edited.py").write_text(_edited_module(version))
        runs.append(run_python(str(source / "runner.py"), env={"TWAT_CACHE_DIR": str(root)}))
    return runs[0], runs[1]


def test_the_edited_module_moves_only_what_it_means_to() -> None:
    def lines(version: int) -> dict[str, int]:
        source = _edited_module(version).splitlines()
        return {name: source.index(f"def {name}(x):") for name in EDITS}

    before, after = lines(0), lines(1)
    unmoved = list(EDITS)[: list(EDITS).index("comment") + 1]
    assert {n: after[n] for n in unmoved} == {n: before[n] for n in unmoved}
    assert after["moved"] > before["moved"] + 1
    assert _edited_module(0) != _edited_module(1)


@pytest.mark.parametrize("name", [n for n in EDITS if n.startswith("body_")])
def test_editing_a_functions_body_makes_its_entries_misses(
    edit_runs: tuple[Any, Any], name: str
) -> None:
    first, second = edit_runs
    assert name in first["calls"]
    assert name in second["calls"], f"{name}: the edited body hit the old body's entry"


@pytest.mark.parametrize("name", ["comment", "docstring", "moved", "pinned"])
def test_editing_comments_docstrings_or_position_keeps_entries(
    edit_runs: tuple[Any, Any], name: str
) -> None:
    first, second = edit_runs
    assert name in first["calls"]
    assert name not in second["calls"], f"{name}: the entry was lost"
    assert second["results"][name] == first["results"][name] == 2


# --- 2. stacked over a functools.wraps decorator ------------------------------------------


def with_scale(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator supplying its own default for a parameter of the inner function."""

    @functools.wraps(fn)
    def wrapper(x: int, scale: int = 100) -> Any:
        return fn(x, scale=scale)

    return wrapper


class Session:
    """A stand-in for a database session (picklable, so closures holding it are stable)."""

    def __init__(self, name: str) -> None:
        self.name = name


DB = Session("db")


def with_session(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator injecting an argument the caller never passes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, session=DB, **kwargs)

    return wrapper


def _lru(func: Any) -> Any:
    return functools.lru_cache(maxsize=None)(func)


#: (id, decorators applied bottom-up, with "wrap" for the wraps decorator). In this module
#: annotations are strings, so a cached function carries a `__signature__`, and
#: `functools.wraps` copies it (with the whole `__dict__`) onto the wrapper over it: the
#: wrapper's own parameters are then found in its code, not in that attribute.
STACKS = [
    ("mcache", ["wrap", "mcache"]),
    ("bcache", ["wrap", "bcache"]),
    ("mcache-over-wrap-over-bcache", ["bcache", "wrap", "mcache"]),
    ("mcache-over-bcache-over-wrap", ["wrap", "bcache", "mcache"]),
]


def _stack(func: Any, layers: list[str], wrap: Any, *, reference: bool) -> Any:
    for layer in layers:
        if layer == "wrap":
            func = wrap(func)
        elif reference:
            func = _lru(func)
        else:
            func = {"mcache": mcache, "bcache": bcache("stacked")}[layer](func)
    return func


@pytest.mark.parametrize("layers", [s[1] for s in STACKS], ids=[s[0] for s in STACKS])
def test_a_wrapper_supplying_its_own_default_is_called_as_the_caller_called_it(
    layers: list[str],
) -> None:
    calls: list[tuple[int, int]] = []

    def area(x: int, scale: int = 1) -> int:
        calls.append((x, scale))
        return x * scale

    expected = _stack(area, layers, with_scale, reference=True)(2)
    calls.clear()
    cached = _stack(area, layers, with_scale, reference=False)
    assert expected == 200  # what functools.lru_cache stacked the same way returns
    assert cached(2) == expected
    assert cached(2) == expected
    assert calls == [(2, 100)]
    assert cached(2, scale=3) == 6


@pytest.mark.parametrize("layers", [s[1] for s in STACKS], ids=[s[0] for s in STACKS])
def test_a_wrapper_injecting_an_argument_is_called_as_the_caller_called_it(
    layers: list[str],
) -> None:
    calls: list[str] = []

    def query(sql: str, session: Session) -> str:
        calls.append(sql)
        return f"{session.name}: {sql}"

    expected = _stack(query, layers, with_session, reference=True)("select 1")
    calls.clear()
    cached = _stack(query, layers, with_session, reference=False)
    assert expected == "db: select 1"
    assert cached("select 1") == expected
    assert cached("select 1") == expected
    assert calls == ["select 1"]
    assert cached("select 2") == "db: select 2"


# --- 4. parameters named like builtins ----------------------------------------------------

BUILTIN_NAMES = [
    "type",
    "map",
    "tuple",
    "len",
    "Exception",
    "BaseException",
    "isinstance",
    "hasattr",
    "getattr",
    "id",
    "hash",
    "object",
    "str",
    "int",
    "dict",
    "list",
    "frozenset",
    "sorted",
    "iter",
    "next",
    "super",
    "print",
]

#: Every builtin a parameter can be named after.
ALL_BUILTINS = sorted(
    name
    for name in dir(builtins)
    if name.isidentifier() and name not in {"None", "True", "False", "__debug__"}
)


class Counted:
    """Counts its instantiations: a class passed as an argument must never be called."""

    made = 0

    def __init__(self, *args: Any) -> None:
        type(self).made += 1


def _probe(source: str) -> tuple[Any, list[Any]]:
    """Define the function in `source` (named `probe`) in a namespace of this module."""
    calls: list[Any] = []
    namespace: dict[str, Any] = {"__name__": __name__, "calls": calls}
    exec(textwrap.dedent(source), namespace)
    return namespace["probe"], calls


def _quietly(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Call `func` and require that it warns nothing (a cache fault is a warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = func(*args, **kwargs)
    assert [str(w.message) for w in caught] == []
    return result


DECORATORS = {"mcache": mcache, "bcache": bcache}


@pytest.mark.parametrize("decorator", list(DECORATORS))
@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_a_parameter_named_like_a_builtin_is_cached(decorator: str, name: str) -> None:
    probe, calls = _probe(
        f"""
        def probe(x, *args, {name}=None, **kwargs):
            calls.append(x)
            return [x, args, {name}, kwargs]
        """
    )
    cached = DECORATORS[decorator](probe)
    assert _quietly(cached, 1, 2, k=3) == [1, (2,), None, {"k": 3}]
    assert _quietly(cached, 1, 2, k=3) == [1, (2,), None, {"k": 3}]
    assert _quietly(cached, 1, **{name: 4}) == [1, (), 4, {}]
    assert _quietly(cached, 1, **{name: 4}) == [1, (), 4, {}]
    assert calls == [1, 1]
    assert cached.cache_info().hits == 2


@pytest.mark.parametrize("decorator", list(DECORATORS))
@pytest.mark.parametrize("name", ["type", "Exception", "BaseException"])
def test_a_builtin_named_parameter_does_not_change_how_errors_propagate(
    decorator: str, name: str
) -> None:
    probe, calls = _probe(
        f"""
        def probe(x, {name}=None):
            calls.append(x)
            if x < 0:
                raise ValueError("negative")
            return x
        """
    )
    cached = DECORATORS[decorator](probe)
    with pytest.raises(ValueError, match="negative"):
        cached(-1)
    assert _quietly(cached, 1) == 1
    assert _quietly(cached, 1) == 1
    assert calls == [-1, 1]
    assert cached.cache_info().hits == 1


class Unkeyable:
    """Unhashable and unpicklable: no key can be built from it (a key fault)."""

    __hash__ = None  # type: ignore[assignment]  # unhashable on purpose

    def __init__(self) -> None:
        self.lock = threading.Lock()


@pytest.mark.parametrize("decorator", list(DECORATORS))
@pytest.mark.parametrize("name", ["Exception", "BaseException", "type"])
def test_a_builtin_named_parameter_does_not_change_how_key_faults_are_handled(
    decorator: str, name: str
) -> None:
    """An argument no key can be built from is a cache fault (the call goes on uncached,
    with a warning) or a clear key error: never a TypeError from the generated code."""
    probe, calls = _probe(
        f"""
        def probe(x, {name}=None):
            calls.append(x)
            return "computed"
        """
    )
    cached = DECORATORS[decorator](probe)
    unkeyable = Unkeyable()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        try:
            result = cached(unkeyable)
        except KeyBuildError:  # a clear key error is a fine answer too
            result = "refused"
    assert (result, calls) in [("computed", [unkeyable]), ("refused", [])]


@pytest.mark.parametrize("decorator", list(DECORATORS))
def test_parameters_named_like_every_builtin_at_once(decorator: str) -> None:
    params = ", ".join(f"{name}=None" for name in ALL_BUILTINS)
    probe, calls = _probe(
        f"""
        def probe(x, *args, {params}, **kwargs):
            calls.append(x)
            return x
        """
    )
    cached = DECORATORS[decorator](probe)
    assert [_quietly(cached, 1, 2, k=3) for _ in range(2)] == [1, 1]
    assert calls == [1]


@pytest.mark.parametrize("decorator", list(DECORATORS))
@pytest.mark.parametrize("positional", [False, True], ids=["keyword", "positional"])
def test_a_class_passed_as_type_is_never_instantiated(decorator: str, positional: bool) -> None:
    probe, calls = _probe(
        """
        def probe(x, type=None):
            calls.append(x)
            return type.__name__
        """
    )
    cached = DECORATORS[decorator](probe)
    Counted.made = 0
    args = (1, Counted) if positional else (1,)
    kwargs = {} if positional else {"type": Counted}
    assert _quietly(cached, *args, **kwargs) == "Counted"
    assert _quietly(cached, *args, **kwargs) == "Counted"
    assert Counted.made == 0, "the key code instantiated the class passed as type="
    assert calls == [1]
    assert cached.cache_info().hits == 1


@pytest.mark.parametrize("decorator", list(DECORATORS))
def test_a_parameter_named_like_the_function(decorator: str) -> None:
    probe, calls = _probe(
        """
        def probe(probe, cached=0):
            calls.append(probe)
            return probe + cached
        """
    )
    cached = DECORATORS[decorator](probe)
    assert [_quietly(cached, 1), _quietly(cached, 1), _quietly(cached, 1, cached=2)] == [1, 1, 3]
    assert calls == [1, 1]


# --- 6. callables the decorators misjudge -------------------------------------------------


def numbers(n: int) -> Iterator[int]:
    yield from range(n)


def test_a_partial_of_a_generator_function_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="generator"):
        mcache(functools.partial(numbers, 3))


def test_a_partial_of_a_sync_function_under_acache_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="async"):
        acache(functools.partial(power, 2))


class AsyncDoubler:
    """A callable instance whose `__call__` is a coroutine function."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, x: int) -> int:
        self.calls += 1
        return 2 * x


@pytest.mark.parametrize("decorator", [mcache, acache], ids=["mcache", "acache"])
def test_an_instance_with_an_async_call_caches_the_awaited_result(decorator: Any) -> None:
    doubler = AsyncDoubler()
    cached = decorator(doubler)

    async def main() -> list[int]:
        return [await cached(1), await cached(1), await cached(2)]

    assert asyncio.run(main()) == [2, 2, 4]
    assert doubler.calls == 2
    assert cached.cache_info().hits == 1


def test_a_sync_wraps_wrapper_around_async_def_never_stores_a_coroutine() -> None:
    """Either recognized as async (the awaited value is cached) or refused clearly."""
    calls: list[int] = []

    async def fetch(x: int) -> int:
        calls.append(x)
        return 2 * x

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cached = mcache(logged(fetch))
        except ConfigurationError as exc:  # refused at decoration: fine, if it says why
            refused = str(exc)
        else:
            refused = None
        if refused is not None:
            assert "async" in refused or "coroutine" in refused, refused
            return

        async def main() -> list[int]:
            return [await cached(1), await cached(1)]

        results = asyncio.run(main())
    messages = [str(w.message) for w in caught]
    assert results == [2, 2]
    stored = cached.cache_engine.get(cached.cache_key(1), MISS)
    assert not inspect.isawaitable(stored), "a coroutine was stored as the cached value"
    if messages:  # refused with a warning: it must say why
        assert any("async" in m or "coroutine" in m for m in messages), messages
    else:  # recognized: the awaited result is what was cached
        assert stored == 2
        assert calls == [1]
        assert cached.cache_info().hits == 1


def test_a_class_based_wrapper_is_called_through_its_own_call() -> None:
    # functools.update_wrapper copies the wrapped function's __dict__, a __signature__
    # included (a twat-cache wrapper carries one): the instance's own __call__ decides.
    class Percent:
        def __init__(self, func: Callable[..., int]) -> None:
            functools.update_wrapper(self, func)
            self.func = func

        def __call__(self, x: int, scale: int = 100) -> int:
            return self.func(x, scale)

    def scaled(x: int, scale: int = 1) -> int:
        return x * scale

    scaled.__signature__ = inspect.signature(scaled)  # type: ignore[attr-defined]
    cached = mcache(Percent(scaled))
    assert cached(2) == Percent(scaled)(2) == 200
    assert cached(2, scale=3) == 6
    assert cached.cache_info().misses == 2
