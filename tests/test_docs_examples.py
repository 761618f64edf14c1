"""Every example in the README and docs runs as written.

Each page's ```python blocks run in order, in one fresh interpreter, as if concatenated into
one script (later blocks see what earlier ones defined); blocks that are doctest sessions
(`>>>` lines) are checked with doctest in the same namespace. Pages are found by glob, so a
new page joins automatically. Tracebacks point at the Markdown file and line.

Examples that need a Redis server read its URL from `$TWAT_CACHE_REDIS_URL`: a page whose
examples name that variable runs with it pointing at the suite's private redis-server
(tests/_redis.py: skipped when the binary is missing, failed under CI=true), emptied first.
Other pages run without the variable, whatever the calling shell has set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from twat_cache.config import REDIS_URL_ENV

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

#: Pages that need no Python example, each with the reason.
NO_EXAMPLES: dict[str, str] = {}

#: Pages whose examples do not run yet, each with why. Strict: once a page is fixed, its test
#: passes, xfail fails, and the page must leave this list.
KNOWN_BROKEN: dict[str, str] = {}

_OPEN = re.compile(r"^(?P<indent>[ \t]*)```+\s*(?P<info>[\w+-]*)")
_PYTHON = frozenset({"python", "py", "python3", "pycon"})


@dataclass
class Block:
    index: int  # 1-based, among the page's Python blocks
    line: int  # line of the block's first code line in the page
    source: str
    doctest: bool


def python_blocks(text: str) -> list[Block]:
    """The page's fenced Python blocks, dedented by their fence's indentation."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _OPEN.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, info = match["indent"], match["info"].lower()
        start = i + 1
        i = start
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if info in _PYTHON:
            body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[start:i]]
            source = "\n".join(body) + "\n"
            is_doctest = any(ln.lstrip().startswith(">>>") for ln in body)
            blocks.append(Block(len(blocks) + 1, start + 1, source, is_doctest))
        i += 1  # past the closing fence
    return blocks


# Runs in the child interpreter: argv[1] is a JSON file {"page", "path", "blocks"}.
RUNNER = r"""
import doctest, json, sys, traceback

spec = json.load(open(sys.argv[1], encoding="utf-8"))
namespace = {"__name__": "__main__", "__file__": spec["path"]}
for block in spec["blocks"]:
    label = f"{spec['page']}, block {block['index']} (line {block['line']})"
    if block["doctest"]:
        test = doctest.DocTestParser().get_doctest(
            block["source"], namespace, label, spec["path"], block["line"] - 1
        )
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        runner.run(test, out=sys.stderr.write, clear_globs=False)
        if runner.failures:
            print(f"FAILED: {label}: {runner.failures} doctest example(s)", file=sys.stderr)
            sys.exit(1)
        continue
    # Padding keeps line numbers: tracebacks then show the page's own lines.
    code = compile("\n" * (block["line"] - 1) + block["source"], spec["path"], "exec")
    try:
        exec(code, namespace)
    except BaseException:
        traceback.print_exc()
        print(f"FAILED: {label}", file=sys.stderr)
        sys.exit(1)
"""


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def needs_redis(blocks: list[Block]) -> bool:
    """Whether a page's examples read the Redis server's URL from the environment."""
    return any(REDIS_URL_ENV in block.source for block in blocks)


def _page_params() -> list[object]:
    params: list[object] = []
    for page in PAGES:
        marks: list[pytest.MarkDecorator] = []
        if page_id(page) in KNOWN_BROKEN:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BROKEN[page_id(page)]))
        if needs_redis(python_blocks(page.read_text(encoding="utf-8"))):
            marks.append(pytest.mark.redis)
        params.append(pytest.param(page, id=page_id(page), marks=marks))
    return params


@pytest.mark.parametrize("page", _page_params())
def test_page_examples_run(page: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    name = page_id(page)
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    if not blocks:
        assert name in NO_EXAMPLES, (
            f"{name} has no ```python example: add one, or list it in NO_EXAMPLES with a reason"
        )
        return
    root = tmp_path / "cache_root"
    root.mkdir(mode=0o700)
    work = tmp_path / "cwd"
    work.mkdir()
    spec = tmp_path / "blocks.json"
    spec.write_text(
        json.dumps({"page": name, "path": str(page), "blocks": [asdict(b) for b in blocks]}),
        encoding="utf-8",
    )
    env = {**os.environ, "TWAT_CACHE_DIR": str(root)}
    env.pop("TWAT_CACHE_DEBUG", None)
    env.pop(REDIS_URL_ENV, None)
    if needs_redis(blocks):
        # The fixture skips without redis-server (fails under CI=true) and empties the server.
        env[REDIS_URL_ENV] = request.getfixturevalue("redis_url")
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(spec)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"an example in {name} failed (exit {result.returncode})\n"
            f"--- stderr ---\n{result.stderr}\n--- stdout ---\n{result.stdout}",
            pytrace=False,
        )


def test_redis_pages_are_found() -> None:
    on_server = Block(1, 1, f'url = os.environ["{REDIS_URL_ENV}"]\n', doctest=False)
    local = Block(2, 5, "x = 1\n", doctest=False)
    assert needs_redis([local, on_server])
    assert not needs_redis([local])


def test_block_extraction() -> None:
    text = (
        "# t\n```python\nx = 1\n```\n\n```bash\nls\n```\n"
        "- item\n\n  ```python\n  >>> x + 1\n  2\n  ```\n"
    )
    blocks = python_blocks(text)
    assert [(b.line, b.doctest) for b in blocks] == [(3, False), (12, True)]
    assert blocks[0].source == "x = 1\n"
    assert blocks[1].source == ">>> x + 1\n2\n"
