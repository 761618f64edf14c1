"""Build code of the documentation site: an mkdocs hook (named in mkdocs.yml).

configuration.md holds a placeholder between two markers; every build replaces it with a
table of `CacheConfig`'s fields (type, default, description) and the forms each option
accepts (the decorators' `CacheOptions`), so the page can never disagree with the code. A
field the decorators do not accept, or a page without the markers, fails the build.
"""

from __future__ import annotations

import logging
import re
import types
import typing
from typing import Any, ForwardRef, Literal

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
PAGE = "configuration.md"

log = logging.getLogger("mkdocs.hooks.config_reference")


def _type_text(annotation: Any) -> str:
    """A readable spelling of a field's type: `int | None`, `'lru' | 'lfu'`, `Callable`."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(value) for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if origin is tuple:
        args = typing.get_args(annotation)
        inner = ", ".join("..." if a is Ellipsis else _type_text(a) for a in args)
        return f"tuple[{inner}]"
    if origin is not None and getattr(origin, "__name__", "") == "Callable":
        return "Callable"
    return getattr(annotation, "__name__", repr(annotation))


def _accepted_text(annotation: Any) -> str:
    """The forms an option accepts as the decorators' `CacheOptions` declares them."""
    if isinstance(annotation, ForwardRef):
        annotation = annotation.__forward_arg__
    text = annotation if isinstance(annotation, str) else _type_text(annotation)
    text = re.sub(r"Literal\[([^\]]*)\]", lambda m: m.group(1).replace(", ", " | "), text)
    return text.replace("Callable[..., Any]", "Callable")


def _cell(text: str) -> str:
    """Plain text in a table cell (a pipe would end the cell)."""
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """A code span; pipes inside one do not end a table cell, so they stay as they are."""
    return f"`{text}`"


def config_reference() -> str:
    """The Markdown table of every `CacheConfig` field."""
    from pydantic import AliasChoices

    from twat_cache.config import CacheConfig
    from twat_cache.decorators import CacheOptions

    accepted = dict(CacheOptions.__annotations__)
    rows = [
        "| option | accepts | stored as | default | description |",
        "|---|---|---|---|---|",
    ]
    for name, field in CacheConfig.model_fields.items():
        if name not in accepted:
            log.warning(
                "CacheConfig.%s is not an option of the decorators (CacheOptions in "
                "twat_cache/decorators.py): the configuration reference would be wrong",
                name,
            )
            continue
        aliases = []
        if isinstance(field.validation_alias, AliasChoices):
            aliases = [
                a for a in field.validation_alias.choices if isinstance(a, str) and a != name
            ]
        option = _code(name) + "".join(f"<br>alias {_code(alias)}" for alias in aliases)
        rows.append(
            "| "
            + " | ".join(
                [
                    option,
                    _code(_accepted_text(accepted[name])),
                    _code(_type_text(field.annotation)),
                    _code(repr(field.default)),
                    _cell(field.description or ""),
                ]
            )
            + " |"
        )
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the placeholder of the configuration page with the generated table."""
    if page.file.src_uri != PAGE:
        return markdown
    start, end = markdown.find(START), markdown.find(END)
    if start < 0 or end < start:
        log.warning("%s has no %s ... %s markers for the generated reference", PAGE, START, END)
        return markdown
    return markdown[: start + len(START)] + "\n\n" + config_reference() + "\n" + markdown[end:]
