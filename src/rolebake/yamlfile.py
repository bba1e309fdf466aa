"""YAML that remembers where every key and item came from, and typed access that fails there.

Every error about a spec must name its file and line (DESIGN.md invariant 4),
so the loader keeps the line of each mapping key and list item.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rolebake.errors import InputError


class YamlMap(dict[Any, Any]):
    """A mapping that knows the line of itself and of each of its keys."""

    line: int = 0
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int:
        """Return the line of `key`, or of the mapping itself when it is absent."""
        return self.key_lines.get(key, self.line)


class YamlList(list[Any]):
    """A list that knows the line of itself and of each item."""

    line: int = 0
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        """Return the line of item `index`."""
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class Vaulted(str):
    """An Ansible Vault value (`!vault |`): its text is the ciphertext, never the secret.

    It stays encrypted in specs and plans; rolebake decrypts it on the host only
    to know what to redact and scan for, and hands Ansible the ciphertext.
    """

    line: int = 0


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(key)
        self.key = key
        self.line = line


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences carry line numbers."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> YamlMap:
    loader.flatten_mapping(node)
    result = YamlMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in result:
            # PyYAML silently keeps the last duplicate; a typo'd copy-paste then hides.
            raise _DuplicateKey(key, line)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> YamlList:
    result = YamlList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


def _construct_vaulted(loader: _LineLoader, node: yaml.Node) -> Vaulted:
    if not isinstance(node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(
            None, None, "!vault must tag a string (the output of ansible-vault "
            "encrypt_string)", node.start_mark)
    result = Vaulted(loader.construct_scalar(node))
    result.line = node.start_mark.line + 1
    return result


_LineLoader.add_constructor("!vault", _construct_vaulted)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(path: Path) -> Any:
    """Load one YAML document, raising InputError with file and line on any problem.

    Args:
        path: the file to read.

    Returns:
        The document, with YamlMap and YamlList in place of dict and list.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {exc}", path=path) from None
    try:
        return yaml.load(text, Loader=_LineLoader)
    except _DuplicateKey as exc:
        raise InputError(f"duplicate key {exc.key!r}", path=path, line=exc.line) from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        problem = exc.problem or str(exc)
        raise InputError(f"invalid YAML: {problem}", path=path, line=line) from None
    except yaml.YAMLError as exc:
        raise InputError(f"invalid YAML: {exc}", path=path) from None


def plain(value: Any) -> Any:
    """Strip line bookkeeping, returning ordinary dicts and lists (for hashing and JSON)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


class Fields:
    """Typed access to one YAML mapping, failing with file and line."""

    def __init__(self, data: Any, path: Path, where: str, line: int) -> None:
        if not isinstance(data, dict):
            prefix = f"{where}: " if where else ""
            raise InputError(f"{prefix}expected a mapping, got {kind(data)}", path=path,
                             line=getattr(data, "line", line))
        self.data: dict[Any, Any] = data
        self.path = path
        self.where = where
        self.line = getattr(data, "line", line)

    def line_of(self, key: str) -> int:
        """The line of `key`, or of the mapping when the key is absent."""
        return self.data.line_of(key) if isinstance(self.data, YamlMap) else self.line

    def fail(self, key: str, message: str) -> InputError:
        """An InputError about `key`, at its line."""
        label = f"{self.where}.{key}" if self.where else key
        return InputError(f"{label}: {message}", path=self.path, line=self.line_of(key))

    def reject_unknown(self, allowed: set[str]) -> None:
        """Fail on the first key not in `allowed`, suggesting the closest one."""
        for key in self.data:
            if not isinstance(key, str) or key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                where = f" in {self.where}" if self.where else ""
                raise InputError(
                    f"unknown key {key!r}{where}{hint}; allowed: {', '.join(sorted(allowed))}",
                    path=self.path,
                    line=self.line_of(key),
                )

    def has(self, key: str) -> bool:
        """True when `key` is given and not null."""
        return key in self.data and self.data[key] is not None

    def text(self, key: str, *, required: bool = False, pattern: re.Pattern[str] | None = None,
            what: str = "a string") -> str | None:
        """A non-empty string, optionally matching `pattern`."""
        if not self.has(key):
            if required:
                raise InputError(
                    f"missing required key {key!r}", path=self.path, line=self.line
                )
            return None
        value = self.data[key]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected {what}, got {kind(value)}")
        if pattern is not None and not pattern.match(value):
            raise self.fail(key, f"{value!r} is not {what}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        """A true/false setting."""
        if not self.has(key):
            return default
        value = self.data[key]
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {kind(value)}")
        return value

    def number(self, key: str, *, minimum: float = 0) -> float | None:
        """A number of at least `minimum`, or None when absent."""
        if not self.has(key):
            return None
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"expected a number, got {kind(value)}")
        if value < minimum:
            raise self.fail(key, f"must be at least {minimum}, got {value}")
        return float(value)

    def text_list(self, key: str, *, pattern: re.Pattern[str] | None = None,
                 what: str = "a string", check: Callable[[str], bool] | None = None,
                 ) -> tuple[str, ...]:
        """A list of distinct non-empty strings, each checked by `pattern` or `check`."""
        if not self.has(key):
            return ()
        value = self.data[key]
        if not isinstance(value, list):
            plural = re.sub(r"^an? ", "", what) + "s"
            raise self.fail(key, f"expected a list of {plural}, got {kind(value)}")
        items: list[str] = []
        for index, item in enumerate(value):
            line = value.line_of(index) if isinstance(value, YamlList) else self.line_of(key)
            if not isinstance(item, str) or not item:
                raise InputError(
                    f"{self._label(key)}[{index}]: expected {what}, got {kind(item)}",
                    path=self.path, line=line,
                )
            if (pattern is not None and not pattern.match(item)) or (
                check is not None and not check(item)
            ):
                raise InputError(
                    f"{self._label(key)}[{index}]: {item!r} is not {what}",
                    path=self.path, line=line,
                )
            if item in items:
                raise InputError(
                    f"{self._label(key)}[{index}]: {item!r} is listed twice",
                    path=self.path, line=line,
                )
            items.append(item)
        return tuple(items)

    def command(self, key: str) -> tuple[str, ...] | None:
        """A cmd/entrypoint: an argv list, or a string run by /bin/sh -c as Docker does."""
        if key not in self.data:
            return None
        value = self.data[key]
        if isinstance(value, str) and value.strip():
            return ("/bin/sh", "-c", value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise self.fail(key, f"expected a list of strings or a string, got {kind(value)}")

    def mapping(self, key: str) -> Fields | None:
        """A nested mapping as Fields, or None when absent."""
        if not self.has(key):
            return None
        return Fields(self.data[key], self.path, self._label(key), self.line_of(key))

    def _label(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key


def kind(value: Any) -> str:
    """How a YAML value reads in an error message (`a mapping`, `an empty string`)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__
