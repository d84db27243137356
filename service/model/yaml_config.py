"""Loading of the YAML configuration files (scorecards, playbooks).

Both formats follow one contract: strict YAML (duplicate keys rejected, a
silent override being a classic typo), a mapping at the root, pydantic
validation, and every problem reported as one :class:`ConfigError` whose text
is ``FILE: path.to.field: reason``, fit for a one-line CLI error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

__all__ = [
    "ConfigError",
    "RefError",
    "clean_message",
    "load_mapping",
    "load_text",
    "merge_over",
    "parse_model",
]

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """An invalid file: ``source`` (file), dotted ``path`` inside it, ``reason``."""

    def __init__(self, source: str, path: str, reason: str) -> None:
        super().__init__(source, path, reason)
        self.source = source
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.source}: {self.path}: {self.reason}"


class RefError(Exception):
    """Raised inside validation for a cross-reference problem, with its own path.

    Not a ``ValueError``, so pydantic lets it through instead of wrapping it
    at the location of the validator.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def clean_message(message: str) -> str:
    """A pydantic error message without its "Value error, " style prefix, on one line."""
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    return " ".join(message.split())


def _default_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(root)"


def _default_reason(err: Mapping[str, Any]) -> str:
    return clean_message(str(err["msg"]))


def parse_model(
    model: type[M],
    text: str,
    source: str,
    error: type[ConfigError],
    *,
    what: str,
    path_of: Callable[[tuple[int | str, ...]], str] = _default_path,
    reason_of: Callable[[Mapping[str, Any]], str] = _default_reason,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> M:
    """Parse YAML ``text`` into ``model``; any problem raises ``error``.

    ``what`` names the file kind in the root-type message ("a scorecard");
    ``path_of`` and ``reason_of`` turn the first pydantic error into the
    reported path and reason (formats with tagged unions drop the tags);
    ``prepare`` transforms the parsed mapping before validation (it may raise
    :class:`RefError`).
    """
    data = load_mapping(text, source, error, what=what)
    try:
        if prepare is not None:
            data = prepare(data)
        return model.model_validate(data)
    except RefError as exc:
        raise error(source, exc.path, exc.reason) from None
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise error(source, path_of(err["loc"]), reason_of(err)) from None


def load_mapping(text: str, source: str, error: type[ConfigError], *, what: str) -> dict[str, Any]:
    """The strict YAML mapping of ``text``; a YAML error or another root raises ``error``."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        raise error(source, "(yaml)", f"{where}{' '.join(str(problem).split())}") from None
    if not isinstance(data, dict):
        raise error(source, "(root)", f"{what} must be a YAML mapping")
    return data


def merge_over(base: Any, override: Any) -> Any:
    """``override`` merged over ``base``: mappings key by key (recursively), lists of
    mappings that all have a ``name`` by name (an override item replaces or extends
    the base item of its name; new names are appended), anything else replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge_over(base[key], value) if key in base else value
        return merged
    if _named_items(base) and _named_items(override):
        by_name = {item["name"]: item for item in override}
        out = [
            merge_over(item, by_name.pop(item["name"])) if item["name"] in by_name else item
            for item in base
        ]
        out.extend(by_name.values())
        return out
    return override


def _named_items(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, dict) and "name" in i for i in value)


def load_text(path: str | Path, error: type[ConfigError]) -> str:
    """The UTF-8 text of ``path``; an unreadable file raises ``error`` (path ``(file)``)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise error(str(path), "(file)", reason) from None
