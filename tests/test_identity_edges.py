"""Function identity at its edges: scripts under runners, spawned workers and symlinks,
closures whose cells are bound late, classes made by functions, object proxies, callables
answering every attribute, captured values that count by their type, and `version=`
next to captured callbacks (issue 12, from a hostile review)."""

from __future__ import annotations

import abc
import collections
import collections.abc
import dataclasses
import functools
import importlib
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypedDict

import pytest

import twat_cache
from twat_cache import bcache, fcache, mcache
from twat_cache.exceptions import ConfigurationError

# --- helpers ------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    # The cache root (conftest) and PYTHONPATH are inherited: a run against another source
    # tree (PYTHONPATH=/other/src) reaches the subprocesses too.
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **extra}


def run(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> Any:
    """Run a fresh interpreter and decode the JSON line it prints last."""
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or _env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- 01, 02: a script under a runner or in a spawned worker ---------------------------------

#: A script whose `load` returns its own label; it prints [value, computations]. With
#: --spawn, `load` runs in a spawned worker, where the script is `__mp_main__`.
LOADER = """
import json
import multiprocessing
import sys

from twat_cache import bcache

LABEL = {label!r}
calls = []


@bcache("data")
def load(name):
    calls.append(name)
    return LABEL + " data for " + name


def work(name):
    return load(name), len(calls)


if __name__ == "__main__" and "--spawn" in sys.argv:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        print(json.dumps(pool.apply(work, ("x",))))
elif __name__ != "__mp_main__":  # run directly, by a profiler, or by runpy ("<run_path>")
    print(json.dumps(work("x")))
"""

#: Where twat_cache is imported from (the source tree under test).
LIBRARY_ROOT = str(Path(twat_cache.__file__).resolve().parents[1])

RUNNERS: dict[str, Callable[[str, Path], list[str]]] = {
    "cProfile": lambda s, tmp: [sys.executable, "-m", "cProfile", "-o", os.devnull, s],
    # Tracing only the script: the interpreter's and the library's files are left alone.
    "trace": lambda s, tmp: [
        sys.executable,
        "-m",
        "trace",
        "--count",
        "-C",
        str(tmp),
        f"--ignore-dir={os.pathsep.join([sys.prefix, sys.base_prefix, LIBRARY_ROOT])}",
        s,
    ],
    "runpy.run_path": lambda s, tmp: [
        sys.executable,
        "-c",
        f"import runpy; runpy.run_path({s!r})",
    ],
    "spawn-worker": lambda s, tmp: [sys.executable, s, "--spawn"],
}


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_two_scripts_under_a_runner_never_share_and_hit_their_own_entries(
    tmp_path: Path, runner: str
) -> None:
    scripts = {}
    for label in ("train", "evaluate"):
        scripts[label] = tmp_path / f"{label}.py"
        scripts[label].write_text(LOADER.format(label=label.upper()))
    argv = RUNNERS[runner]
    train = run(argv(str(scripts["train"]), tmp_path), cwd=tmp_path)
    assert train == ["TRAIN data for x", 1]
    evaluate = run(argv(str(scripts["evaluate"]), tmp_path), cwd=tmp_path)
    assert evaluate == ["EVALUATE data for x", 1], f"under {runner}: train.py's entry returned"
    again = run(argv(str(scripts["train"]), tmp_path), cwd=tmp_path)
    assert again == ["TRAIN data for x", 0], f"under {runner}: train.py missed its own entry"
    # The same script run directly is the same function: it finds what the runner stored.
    direct = run([sys.executable, str(scripts["train"])], cwd=tmp_path)
    assert direct == ["TRAIN data for x", 0], f"a direct run missed what {runner} stored"


PARENT_FILLS = """
import json
import multiprocessing

from twat_cache import bcache

calls = []


@bcache("work")
def slow(x):
    calls.append(x)
    return x * 2


def in_worker(x):
    return slow(x), len(calls)


if __name__ == "__main__":
    slow(21)  # the parent stores the entry
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        print(json.dumps(pool.apply(in_worker, (21,))))
"""


def test_a_spawned_worker_reads_its_parents_entry(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(PARENT_FILLS)
    value, worker_calls = run([sys.executable, str(script)], cwd=tmp_path)
    assert value == 42
    assert worker_calls == 0, "the spawned worker (__mp_main__) missed its parent's entry"


# --- 08, 18: a script's functions as arguments; a script through a symlink -----------------

LIBRARY = """
from twat_cache import bcache


@bcache("apply")
def apply(fn, x):
    return fn(x)
"""

CALLER = """
import json

from lib import apply


def transform(x):
    return x * {k}


print(json.dumps(apply(transform, 10)))
"""


def test_a_scripts_function_passed_to_a_cached_library_function(tmp_path: Path) -> None:
    (tmp_path / "lib.py").write_text(LIBRARY)
    (tmp_path / "train.py").write_text(CALLER.format(k=2))
    (tmp_path / "evaluate.py").write_text(CALLER.format(k=3))
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = _env(PYTHONPATH=path)
    results = [
        run([sys.executable, str(tmp_path / name)], cwd=tmp_path, env=env)
        for name in ("train.py", "evaluate.py")
    ]
    assert results == [20, 30], "evaluate.py's transform got train.py's entry"


SYMLINKED = """
import json

from twat_cache import bcache

calls = []


@bcache("sym")
def load(name):
    calls.append(name)
    return name * 2


print(json.dumps([load("x"), len(calls)]))
"""


def test_a_script_run_through_a_symlink_hits_the_direct_runs_entries(tmp_path: Path) -> None:
    real = tmp_path / "project" / "train.py"
    real.parent.mkdir()
    real.write_text(SYMLINKED)
    link = tmp_path / "bin" / "train"
    link.parent.mkdir()
    link.symlink_to(real)
    assert run([sys.executable, str(real)], cwd=tmp_path) == ["xx", 1]
    assert run([sys.executable, str(link)], cwd=tmp_path) == ["xx", 0], "the symlink missed"


# --- 03: closure cells bound after the decorated def ---------------------------------------


def make_helper_below(decorate: Callable[[Any], Any], k: int) -> Any:
    @decorate
    def price(x: int) -> int:
        return helper(x)

    def helper(x: int) -> int:  # defined after price: price's cell is empty when decorated
        return x * k

    return price


def make_assigned_below(decorate: Callable[[Any], Any], rate: int) -> Any:
    @decorate
    def convert(x: int) -> int:
        return x * factor

    factor = rate  # bound after the def
    return convert


class Model:
    """A bound method cached in `__init__` before the attributes it reads are set."""

    def __init__(self, decorate: Callable[[Any], Any], scale: int) -> None:
        self.predict = decorate(self._predict)
        self.scale = scale

    def _predict(self, x: int) -> int:
        return x * self.scale


LATE = {
    "helper-below": make_helper_below,
    "assigned-below": make_assigned_below,
    "method-in-init": Model,
}


@pytest.mark.parametrize("make", list(LATE.values()), ids=list(LATE))
def test_late_bound_closure_cells_never_share_entries(
    persist: Callable[..., Any], make: Callable[..., Any]
) -> None:
    first = make(persist("late"), 2)
    second = make(persist("late"), 3)

    def call(made: Any) -> int:
        return int(made.predict(10) if isinstance(made, Model) else made(10))

    assert (call(first), call(second)) == (20, 30)
    assert (call(first), call(second)) == (20, 30)
    again = make(persist("late"), 3)  # the same closure made again shares its entries
    assert call(again) == 30
    cached = again.predict if isinstance(again, Model) else again
    assert cached.cache_info().hits == 1


# --- 04: classes made inside a function ----------------------------------------------------


def local_init(k: int) -> Any:
    class Point:
        def __init__(self, x: int) -> None:
            self.x = x * k

    def get(x: int) -> int:
        return Point(x).x

    return get


def local_dunder(k: int) -> Any:
    class Adder:
        def __add__(self, other: int) -> int:
            return other + k

    adder = Adder()

    def get(x: int) -> int:
        return adder + x

    return get


def with_type(k: int) -> Any:
    made = type("K", (), {"k": k})

    def get(x: int) -> int:
        return int(made.k) + x

    return get


def with_namedtuple(k: int) -> Any:
    pair = collections.namedtuple("pair", "x y", defaults=(k,))

    def get(x: int) -> int:
        return int(pair(x).y)

    return get


def with_make_dataclass(k: int) -> Any:
    made = dataclasses.make_dataclass("D", [("a", int, dataclasses.field(default=k))])

    def get(x: int) -> int:
        return int(made().a) + x

    return get


CLASS_FACTORIES = [local_init, local_dunder, with_type, with_namedtuple, with_make_dataclass]


@pytest.mark.parametrize("factory", CLASS_FACTORIES, ids=lambda f: f.__name__)
def test_classes_made_inside_a_function_tell_closures_apart(
    factory: Callable[[int], Any],
) -> None:
    plain = [factory(2), factory(3)]
    expected = [f(5) for f in plain]
    assert expected[0] != expected[1]
    cached = [bcache("classes")(factory(2)), bcache("classes")(factory(3))]
    assert [f(5) for f in cached] == expected
    assert [f(5) for f in cached] == expected
    assert [f.cache_info().hits for f in cached] == [1, 1]


# --- 06: an object proxy claiming to be a function ------------------------------------------


class FunctionProxy:
    """A minimal object proxy built as wrapt's ObjectProxy is: it reports the wrapped
    function's class (so `isinstance(proxy, FunctionType)` is true), forwards every other
    attribute (its `__code__` and `__defaults__` are the wrapped function's), and compares
    and hashes as the wrapped function. Its own `__call__` decides what a call does."""

    def __init__(self, wrapped: Callable[..., Any]) -> None:
        object.__setattr__(self, "__wrapped__", wrapped)

    @property  # type: ignore[misc]  # a proxy lies about its class on purpose
    def __class__(self) -> type:
        return type(self.__wrapped__)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__wrapped__, name)

    def __eq__(self, other: object) -> bool:
        return bool(self.__wrapped__ == other)

    def __hash__(self) -> int:
        return hash(self.__wrapped__)


class Percent(FunctionProxy):
    """A proxy supplying its own default for the wrapped function's `scale`."""

    def __call__(self, x: int, scale: int = 100) -> int:
        return int(self.__wrapped__(x, scale=scale))


class Negated(FunctionProxy):
    """A proxy negating what the wrapped function returns; picklable by its parts."""

    def __call__(self, *args: Any, **kwargs: Any) -> int:
        return -int(self.__wrapped__(*args, **kwargs))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.__wrapped__,))


class OpaqueNegated(Negated):
    """As wrapt's proxies: refuses to be pickled."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise NotImplementedError("object proxy must define __reduce__()")


def scaled(x: int, scale: int = 1) -> int:
    return x * scale


def test_the_proxy_lies_about_its_class() -> None:
    assert isinstance(Percent(scaled), types.FunctionType)
    assert Percent(scaled)(2) == 200
    assert Negated(scaled)(3) == -3


@pytest.mark.parametrize("decorator", ["mcache", "bcache"])
def test_an_object_proxy_is_called_as_the_object_it_is(decorator: str) -> None:
    deco = mcache if decorator == "mcache" else bcache("proxy", version="1")
    cached = deco(Percent(scaled))
    assert cached(2) == 200  # the proxy's own default, as an uncached call
    assert cached(2) == 200
    assert cached(2, scale=3) == 6
    assert cached.cache_info().hits == 1


@pytest.mark.parametrize("proxy", [Negated, OpaqueNegated], ids=["picklable", "opaque"])
def test_a_function_and_a_proxy_of_it_never_share_entries(proxy: type[Negated]) -> None:
    plain = bcache("shared")(scaled)
    assert plain(3) == 3
    try:
        negated = bcache("shared")(proxy(scaled))
    except ConfigurationError as exc:
        refused = str(exc)
    else:
        refused = None
    if refused is not None:  # refused at decoration: it must say how to identify it
        assert "version=" in refused
        return
    assert (plain(3), negated(3)) == (3, -3)
    assert (plain(3), negated(3)) == (3, -3)
    assert negated.cache_info().hits == 1


# --- 13: a callable answering every attribute ------------------------------------------------


class Stub:
    """A callable whose class answers every attribute (a config object, an RPC stub)."""

    def __getattr__(self, name: str) -> int:
        return 42

    def __call__(self, x: int) -> int:
        return x * 2


@pytest.mark.parametrize("decorator", [mcache, bcache, fcache], ids=lambda d: d.__name__)
def test_a_callable_answering_every_attribute_decorates_and_caches(decorator: Any) -> None:
    cached = decorator()(Stub())
    assert (cached(2), cached(2), cached(3)) == (4, 4, 6)
    assert cached.cache_info().hits == 1
    assert cached.cache_info().misses == 2


# --- 14c, 14d: captured values that are not what a function computes ------------------------


def test_a_singledispatch_function_decorates_without_a_version() -> None:
    @functools.singledispatch
    def show(x: object) -> str:
        return "object"

    show.register(int, lambda x: "int")
    show(1.5)  # fills its dispatch cache (a WeakKeyDictionary): not what it computes
    cached = bcache("dispatch")(show)
    assert (cached(1), cached("a"), cached(1), cached("a")) == ("int", "object", "int", "object")
    assert cached.cache_info().hits == 2


@pytest.mark.parametrize("make", ["Lock", "Queue"])
def test_a_closure_over_a_multiprocessing_lock_or_queue_decorates(make: str) -> None:
    guard = getattr(multiprocessing, make)()
    calls: list[int] = []

    def guarded(x: int) -> int:
        calls.append(x)
        return x + 1 if guard is not None else -1

    try:
        cached = bcache("guarded")(guarded)
        assert (cached(1), cached(1)) == (2, 2)
        assert calls == [1]
    finally:
        if make == "Queue":
            guard.close()
            guard.join_thread()


# --- 19: version= next to captured callbacks ------------------------------------------------


def make_fetch(transform: Callable[[int], int]) -> Callable[[int], int]:
    def fetch(x: int) -> int:
        return transform(x)

    return fetch


def test_a_version_keeps_captured_callbacks_apart(persist: Callable[..., Any]) -> None:
    double = persist("fetch", version="1")(make_fetch(lambda v: v * 2))
    triple = persist("fetch", version="1")(make_fetch(lambda v: v * 3))
    assert (double(5), triple(5)) == (10, 15)
    assert (double(5), triple(5)) == (10, 15)
    assert double.cache_info().hits == triple.cache_info().hits == 1


# --- second review: identity settled at the first call (01, 12) -----------------------------


def make_filled_dict(decorate: Callable[[Any], Any], k: int) -> Any:
    params: dict[str, int] = {}

    @decorate
    def scaled(x: int) -> int:
        return x * params["k"]

    params["k"] = k  # configured after decoration, before the first call
    return scaled


class Fitted:
    weight: int | None = None


def make_fitted_object(decorate: Callable[[Any], Any], k: int) -> Any:
    model = Fitted()

    @decorate
    def predict(x: int) -> int:
        return x * model.weight

    model.weight = k  # "fit" after decoration
    return predict


def _times(params: dict[str, int], x: int) -> int:
    return x * params["k"]


def make_filled_partial(decorate: Callable[[Any], Any], k: int) -> Any:
    params: dict[str, int] = {}
    cached = decorate(functools.partial(_times, params))  # a mutable bound argument
    params["k"] = k
    return cached


def make_checked_before_its_helper(decorate: Callable[[Any], Any], k: int) -> Any:
    @decorate
    def price(x: int) -> int:
        if x == 0:
            return 0  # the fast path needs no helper
        return helper(x)

    assert price(0) == 0  # a self-check in the factory, before the helper below is bound

    def helper(x: int) -> int:
        return x * k

    return price


FILLED = {
    "dict-filled-after": make_filled_dict,
    "object-fitted-after": make_fitted_object,
    "partial-bound-dict-filled-after": make_filled_partial,
    "called-before-a-cell-is-bound": make_checked_before_its_helper,
}


@pytest.mark.parametrize("make", list(FILLED.values()), ids=list(FILLED))
def test_what_a_closure_holds_counts_as_it_is_at_the_first_call(
    persist: Callable[..., Any], make: Callable[..., Any]
) -> None:
    first = make(persist("filled"), 2)
    second = make(persist("filled"), 3)
    assert (first(10), second(10)) == (20, 30), "the second factory's closure got the first's"
    assert (first(10), second(10)) == (20, 30)
    again = make(persist("filled"), 3)  # the same closure made again shares its entries
    assert again(10) == 30
    assert again.cache_info().misses == 0


# --- second review 02, 10, 08: modules that name their classes and functions ----------------


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`write_module(name, source)`: the module `name` imported from `source` written in a
    fresh folder on sys.path; removed from sys.modules at teardown."""
    folder = tmp_path / "modules"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    names: list[str] = []

    def write(name: str, source: str) -> types.ModuleType:
        (folder / f"{name}.py").write_text(source)
        importlib.invalidate_caches()
        names.append(name)
        return importlib.import_module(name)

    yield write
    for name in names:
        sys.modules.pop(name, None)


LAZY_MODULE = """
def __getattr__(name):  # PEP 562: lazy attributes, deprecation shims
    raise AttributeError(name)


def make_unit(scale):
    return type("Unit", (), {"scale": scale})


def convert(x, unit):
    return x * unit.scale


def make_op(k):
    def op(x):
        return x * k

    op.__qualname__ = "op"  # as if it were the module's own op
    return op


def apply(fn, x):
    return fn(x)
"""


def test_a_module_getattr_never_makes_its_local_classes_and_closures_global(
    persist: Callable[..., Any], write_module: Callable[[str, str], Any]
) -> None:
    lazy = write_module("twat_lazy_units", LAZY_MODULE)
    convert = persist("units")(lazy.convert)
    apply = persist("apply")(lazy.apply)
    assert (convert(2, lazy.make_unit(1000)), convert(2, lazy.make_unit(1))) == (2000, 2)
    assert (apply(lazy.make_op(2), 1), apply(lazy.make_op(3), 1)) == (2, 3)
    assert convert(2, lazy.make_unit(1)) == 2  # a class made again alike hits its entry
    assert convert.cache_info().hits == 1


def _enum_module(members: str) -> str:
    lines = "".join(f"    {name} = {i}\n" for i, name in enumerate(members.split(), 1))
    return f"import enum\n\n\nclass Status(enum.Enum):\n{lines}"


def test_enum_classes_of_one_name_in_two_modules_never_share(
    persist: Callable[..., Any], write_module: Callable[[str, str], Any]
) -> None:
    api = write_module("twat_api_status", _enum_module("OK FAILED")).Status
    db = write_module("twat_db_status", _enum_module("ACTIVE DELETED")).Status
    assert api.__qualname__ == db.__qualname__

    @persist("choices")
    def choices(enum_cls: Any) -> list[str]:
        return [member.name for member in enum_cls]

    assert (choices(api), choices(db)) == (["OK", "FAILED"], ["ACTIVE", "DELETED"])
    assert (choices(api), choices(db)) == (["OK", "FAILED"], ["ACTIVE", "DELETED"])
    assert choices.cache_info().hits == 2


PLUGIN = """
DATA = {{"x": "{label} data"}}


def load(name):
    return DATA[name]
"""


def _load_as_plugin(path: Path) -> types.ModuleType:
    """A plugin loader: the file at `path` as a module named "plugin" (not registered)."""
    spec = importlib.util.spec_from_file_location("plugin", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_files_loaded_under_one_module_name_never_share(
    persist: Callable[..., Any], tmp_path: Path
) -> None:
    paths = []
    for label in "AB":
        paths.append(tmp_path / f"plugin_{label}.py")
        paths[-1].write_text(PLUGIN.format(label=label))
    loads = [persist("plugins")(_load_as_plugin(path).load) for path in paths]
    assert [load("x") for load in loads] == ["A data", "B data"], "B's load got A's entry"
    again = persist("plugins")(_load_as_plugin(paths[0]).load)  # the same file loaded again
    assert again("x") == "A data"
    assert again.cache_info().hits == 1


# --- second review 05, 06, 07, 17: classes made by a function --------------------------------


def make_named_tuple(scale: int) -> Any:
    class Point(NamedTuple):
        x: float

        def scaled(self) -> float:
            return self.x * scale

    return Point(1.0)


def make_dict_subclass(default: Any) -> Any:
    class Defaults(dict[str, Any]):
        def __missing__(self, key: str) -> Any:
            return default

    return Defaults()


def make_list_subclass(scale: int) -> Any:
    class Row(list[int]):
        def scaled(self) -> list[int]:
            return [v * scale for v in self]

    return Row([1, 2])


CONTAINER_ARGUMENTS = {
    "NamedTuple-with-a-method": (make_named_tuple, (10, 20), lambda p: p.scaled()),
    "dict-subclass-with-missing": (make_dict_subclass, (0, "none"), lambda d: d["missing"]),
    "list-subclass-with-a-method": (make_list_subclass, (2, 3), lambda r: r.scaled()),
}


@pytest.mark.parametrize("case", list(CONTAINER_ARGUMENTS))
def test_instances_of_local_container_classes_are_keyed_by_their_class(
    persist: Callable[..., Any], case: str
) -> None:
    make, (a, b), reveal = CONTAINER_ARGUMENTS[case]
    first, second = make(a), make(b)
    assert first == second  # equal items: only their classes tell them apart
    expected = (reveal(first), reveal(second))
    assert expected[0] != expected[1]
    observe = persist("containers")(reveal)
    assert (observe(first), observe(second)) == expected, "two local classes shared an entry"
    assert observe(make(a)) == expected[0]  # the same class made again hits
    assert observe.cache_info().hits == 1


def make_quantity(unit: int) -> type:
    class Meta(type):
        def unit(cls) -> int:
            return unit

    class Quantity(metaclass=Meta):
        pass

    return Quantity


def test_classes_differing_only_in_a_local_metaclass_never_share(
    persist: Callable[..., Any],
) -> None:
    @persist("meta")
    def unit_of(cls: Any) -> int:
        return int(cls.unit())

    def closure(cls: Any) -> Callable[[int], int]:
        def times_unit(x: int) -> int:
            return x * cls.unit()

        return times_unit

    assert (unit_of(make_quantity(1)), unit_of(make_quantity(2))) == (1, 2)
    captured = [persist("meta-captured")(closure(make_quantity(k))) for k in (1, 2)]
    assert [f(10) for f in captured] == [10, 20], "a closure over the other class's entry"
    assert unit_of(make_quantity(2)) == 2
    assert unit_of.cache_info().hits == 1


def make_abc_closure(k: int) -> Callable[[int], int]:
    class Base(abc.ABC):
        @abc.abstractmethod
        def run(self) -> int: ...

    class Impl(Base):
        def run(self) -> int:
            return k

    isinstance(Impl(), Base)  # fills the ABC's registry cache

    def go(x: int) -> int:
        return Impl().run() + x

    return go


def make_protocol_closure(k: int) -> Callable[[int], int]:
    class Runs(Protocol):
        def run(self) -> int: ...

    class Impl(Runs):
        def run(self) -> int:
            return k

    def go(x: int) -> int:
        return Impl().run() + x

    return go


def make_collections_abc_closure(k: int) -> Callable[[int], int]:
    class Sized(collections.abc.Sized):
        def __len__(self) -> int:
            return k

    def go(x: int) -> int:
        return len(Sized()) + x

    return go


def make_cached_property_closure(k: int) -> Callable[[int], int]:
    class Lazy:
        @functools.cached_property
        def value(self) -> int:
            return k

    def go(x: int) -> int:
        return Lazy().value + x

    return go


LOCAL_CLASS_CLOSURES = {
    "abc": make_abc_closure,
    "protocol": make_protocol_closure,
    "collections-abc": make_collections_abc_closure,
    "cached-property": make_cached_property_closure,
}


@pytest.mark.parametrize(
    "make", list(LOCAL_CLASS_CLOSURES.values()), ids=list(LOCAL_CLASS_CLOSURES)
)
def test_closures_over_local_abc_protocol_or_cached_property_classes_decorate(
    persist: Callable[..., Any], make: Callable[[int], Callable[[int], int]]
) -> None:
    first = persist("local-abc")(make(1))  # no version=: a ConfigurationError before
    second = persist("local-abc")(make(2))
    assert (first(10), second(10)) == (11, 12)
    assert (first(10), second(10)) == (11, 12)
    assert first.cache_info().hits == second.cache_info().hits == 1


def make_lazy_class(k: int) -> type:
    class Lazy:
        @functools.cached_property
        def value(self) -> int:
            return k

    return Lazy


def test_instances_of_a_local_class_with_a_cached_property_are_cached(
    persist: Callable[..., Any],
) -> None:
    @persist("lazy")
    def read(obj: Any) -> int:
        return int(obj.value)

    # Warnings are errors here: a CacheFaultWarning (uncached) fails the test.
    assert (read(make_lazy_class(1)()), read(make_lazy_class(2)())) == (1, 2)
    assert read(make_lazy_class(1)()) == 1
    assert read.cache_info().hits == 1


def make_typed_dict(kind: type) -> type:
    return TypedDict("Row", {"a": kind})  # the functional form: a real type, not a string


def make_field_type(kind: type) -> type:
    return dataclasses.make_dataclass("Length", [("value", kind)])


def make_field_metadata(unit: str) -> type:
    @dataclasses.dataclass
    class Length:
        value: float = dataclasses.field(default=0.0, metadata={"unit": unit})

    return Length


SCHEMAS = {
    "TypedDict-annotation": (make_typed_dict, (int, str)),
    "dataclass-field-type": (make_field_type, (int, str)),
    "dataclass-field-metadata": (make_field_metadata, ("m", "s")),
}


def describe(cls: Any) -> list[str]:
    """What a serializer or validator reads of a schema class: field types and metadata."""
    if dataclasses.is_dataclass(cls):
        return [f"{f.type!r} {dict(f.metadata)}" for f in dataclasses.fields(cls)]
    return [t.__name__ for t in cls.__annotations__.values()]


@pytest.mark.parametrize("case", list(SCHEMAS))
def test_local_schema_classes_differing_in_types_or_metadata_never_share(
    persist: Callable[..., Any], case: str
) -> None:
    make, (a, b) = SCHEMAS[case]
    expected = (describe(make(a)), describe(make(b)))
    assert expected[0] != expected[1]
    schema = persist("schemas")(describe)
    assert (schema(make(a)), schema(make(b))) == expected, "two schemas shared an entry"
    assert schema(make(b)) == expected[1]
    assert schema.cache_info().hits == 1


# --- second review 15: callbacks inside captured containers count with their code -----------

PIPELINES = """
import functools
import json
import sys

from steps import step
from twat_cache import bcache


def cached(name, run):
    return bcache(name)(run)


def direct(fn):
    return cached("direct", lambda x: fn(x))


def pipeline(fns):
    def run(x):
        for fn in fns:
            x = fn(x)
        return x

    return cached("pipeline-" + type(fns).__name__, run)


def table(ops):
    return cached("table", lambda x: ops["step"](x))


def nested(config):
    return cached("nested", lambda x: config["steps"][0](x))


def bound(fn):
    return cached("partial", lambda x: fn(x))


runs = {
    "direct": direct(step),
    "list": pipeline([step]),
    "tuple": pipeline((step,)),
    "dict": table({"step": step}),
    "nested": nested({"steps": [step]}),
    "partial": bound(functools.partial(step)),
}
print(json.dumps({name: run(1) for name, run in runs.items()}))
"""


def test_callbacks_inside_captured_containers_count_with_their_code(tmp_path: Path) -> None:
    (tmp_path / "prog.py").write_text(PIPELINES)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = _env(PYTHONPATH=path)
    outputs = []
    for body in ("return x + 1", "return x + 2"):  # the user edits steps.py between runs
        (tmp_path / "steps.py").write_text(f"def step(x):\n    {body}\n")
        outputs.append(run([sys.executable, str(tmp_path / "prog.py")], cwd=tmp_path, env=env))
    names = ["direct", "list", "tuple", "dict", "nested", "partial"]
    assert outputs[0] == dict.fromkeys(names, 2)
    stale = [name for name in names if outputs[1][name] != 3]
    assert stale == [], f"the edited step's old entries were returned for {stale}"
