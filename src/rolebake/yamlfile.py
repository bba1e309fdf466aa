"""YAML that remembers where every key and item came from, and typed access that fails there.

Every error about a spec must name its file and line (DESIGN.md invariant 4),
so the loader keeps the line of each mapping key and list item. It also
refuses, at a line, what PyYAML would accept and later code would choke on:
unhashable keys, nesting deeper than MAX_DEPTH, and aliases that expand to
more than MAX_ALIAS_EXPANSION values (a few hundred bytes of nested aliases
otherwise expand to gigabytes once the data is copied or serialised). A file
larger than MAX_FILE_BYTES is refused from its size, before it is read.

Within `parsed_once()` (a command) each file is parsed once per loader while
its stat stays the same: a spec, playbook or task file is read by several
checks and by each layer that uses it.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from rolebake.errors import InputError
from rolebake.yamlio import MAX_FILE_BYTES, cached, check_size, parsed_once, read_capped

__all__ = ["MAX_ALIAS_EXPANSION", "MAX_DEPTH", "MAX_FILE_BYTES", "Fields", "Vaulted",
           "YamlList", "YamlMap", "check_size", "kind", "load_yaml", "parsed_once", "plain",
           "read_ansible_yaml", "require_json"]

# Far beyond any real spec, playbook or vars file, and far below Python's
# recursion limit for the composer, the constructor and `plain`.
MAX_DEPTH = 100
# Values that aliases may add to a document once expanded; a legitimate file
# reuses a few blocks, an alias bomb multiplies them.
MAX_ALIAS_EXPANSION = 100_000
# One-line text (names, paths, users) must not carry control characters: a
# trailing newline or a NUL passes a loose check here and breaks the engine later.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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


class _Refused(Exception):
    """Valid YAML that rolebake refuses, at a line."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.message = message
        self.line = mark.line + 1 if mark is not None else None


class Vaulted(str):
    """An Ansible Vault value (`!vault |`): its text is the ciphertext, never the secret.

    It stays encrypted in specs and plans; rolebake decrypts it on the host only
    to know what to redact and scan for, and hands Ansible the ciphertext.
    """

    line: int = 0


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences carry line numbers, with caps on shape.

    PyYAML resolves an alias to the same node, so composing and constructing
    stay linear in the text; the cost of an alias bomb comes later, when the
    shared data is copied or serialised. So each composed node records its
    expanded size and height, each alias adds its target's size to a running
    total, and composing stops at the first alias past the cap.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.expanded = 0
        self.shape: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is PyYAML's error to raise
                self._count_alias(event, target)
            return super().compose_node(parent, index)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels",
                               self.peek_event().start_mark)
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = []
        shapes = [self.shape[id(child)] for child in children]
        self.shape[id(node)] = (1 + sum(size for size, _ in shapes),
                                1 + max((height for _, height in shapes), default=0))
        return node

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        # An explicit core tag on a value it cannot hold (`!!int web`, `!!float`,
        # `!!timestamp " "`) makes PyYAML's constructor raise a plain ValueError,
        # AttributeError or IndexError: turn it into an error at the value's line.
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, IndexError, OverflowError):
            tag = "!!" + node.tag.rsplit(":", 1)[-1]
            shown = f"{node.value!r} " if isinstance(node, yaml.ScalarNode) else ""
            raise _Refused(f"invalid YAML: {shown}cannot be read as {tag}",
                           node.start_mark) from None

    def _count_alias(self, event: Any, target: Any) -> None:
        shape = self.shape.get(id(target))
        if shape is None:  # the anchored node is still being composed: it holds itself
            raise _Refused(f"alias *{event.anchor} refers to a node that contains it",
                           event.start_mark)
        size, height = shape
        self.expanded += size
        if self.expanded > MAX_ALIAS_EXPANSION:
            raise _Refused(f"aliases expand to more than {MAX_ALIAS_EXPANSION} values "
                           f"(at *{event.anchor})", event.start_mark)
        if self.depth + height > MAX_DEPTH:
            raise _Refused(f"alias *{event.anchor} nests deeper than {MAX_DEPTH} levels",
                           event.start_mark)


def _construct_mapping(loader: Any, node: yaml.MappingNode) -> YamlMap:
    loader.flatten_mapping(node)
    result = YamlMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise _Refused(f"a mapping key must be a single value, not {kind(key)}",
                           key_node.start_mark) from None
        if key in result and not isinstance(loader, _AnsibleLoader):
            # PyYAML silently keeps the last duplicate; a typo'd copy-paste then hides.
            raise _Refused(f"duplicate key {key!r}", key_node.start_mark)
        line = key_node.start_mark.line + 1
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _construct_sequence(loader: Any, node: yaml.SequenceNode) -> YamlList:
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


class _AnsibleLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Reads role and playbook files the way Ansible does: its own tags, repeated keys.

    libyaml's parser when there is one: every plan reads each role's task files.
    """


_AnsibleLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_AnsibleLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG,
                               _construct_sequence)


def _ansible_tag(loader: _AnsibleLoader, suffix: str, node: yaml.Node) -> Any:
    # !vault, !unsafe and friends: what is under the tag is kept as plain text or data.
    del suffix
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return _construct_sequence(loader, node)
    return _construct_mapping(loader, node)  # type: ignore[arg-type]


_AnsibleLoader.add_multi_constructor("!", _ansible_tag)


def load_yaml(path: Path) -> Any:
    """Load one YAML document, raising InputError with file and line on any problem.

    Args:
        path: the file to read; one over the size cap is refused unread.

    Returns:
        The document, with YamlMap and YamlList in place of dict and list; within
        `parsed_once()` it may be shared with other readers: never change it.
    """
    return cached("lines", path, lambda: _load_yaml(path))


def _load_yaml(path: Path) -> Any:
    try:
        data = read_capped(path)
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", path=path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text (byte 0x{data[exc.start]:02x})", path=path,
                         line=line) from None
    try:
        return yaml.load(text, Loader=_LineLoader)
    except _Refused as exc:
        raise InputError(exc.message, path=path, line=exc.line) from None
    except yaml.reader.ReaderError as exc:
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise InputError(f"invalid YAML: character U+{char:04X} is not allowed", path=path,
                         line=text[:exc.position].count("\n") + 1) from None
    except yaml.MarkedYAMLError as exc:
        problem = exc.problem or str(exc)
        if exc.context and exc.context_mark and exc.problem:
            # e.g. "found duplicate anchor 'x'; first occurrence (line 3), second occurrence"
            problem = f"{exc.context} (line {exc.context_mark.line + 1}), {exc.problem}"
        raise InputError(f"invalid YAML: {_one_line(problem)}", path=path,
                         line=exc.problem_mark.line + 1 if exc.problem_mark else None) from None
    except yaml.YAMLError as exc:
        raise InputError(f"invalid YAML: {_one_line(str(exc))}", path=path) from None
    except RecursionError:  # the caps above should make this unreachable; never a traceback
        raise InputError(f"nested deeper than {MAX_DEPTH} levels", path=path) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _shown(number: float) -> str:
    """A number as a message shows it: 31536000, 0.001, 1e+29 (never 40 digits)."""
    if number == int(number) and abs(number) < 10**12:
        return str(int(number))
    return f"{number:.6g}"


def read_ansible_yaml(path: Path) -> Any:
    """A playbook, task, vars or meta file as Ansible reads it, with lines; None if unreadable.

    Ansible accepts a repeated key (the last one wins) and its own tags
    (`!vault`, `!unsafe`), so this does too. A file that is not YAML at all is
    left for Ansible to report at run time, with its own file and line. A file
    over the size cap is refused unread. Within `parsed_once()` the document may
    be shared with other readers: never change it.

    Raises:
        InputError: the file is over the size cap.
    """
    return cached("ansible", path, lambda: _read_ansible_yaml(path))


def _read_ansible_yaml(path: Path) -> Any:
    try:
        return yaml.load(read_capped(path).decode("utf-8"), Loader=_AnsibleLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, _Refused):
        return None


def plain(value: Any) -> Any:
    """Strip line bookkeeping, returning ordinary dicts and lists (for hashing and JSON)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def leaves(value: Any) -> Iterator[Any]:
    """Every value below `value` that is neither a mapping nor a list, depth first.

    Mapping keys are not leaves: the callers look for text a role wrote
    (host-bound markers, secrets, vaulted values), which lives in values.
    """
    if isinstance(value, Mapping):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from leaves(item)
    else:
        yield value


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

    def line_of(self, key: Any) -> int:
        """The line of `key`, or of the mapping when the key is absent."""
        return self.data.line_of(key) if isinstance(self.data, YamlMap) else self.line

    def fail(self, key: str, message: str) -> InputError:
        """An InputError about `key`, at its line."""
        label = f"{self.where}.{key}" if self.where else key
        return InputError(f"{label}: {message}", path=self.path, line=self.line_of(key))

    def item_fail(self, key: str, index: int, message: str) -> InputError:
        """An InputError about item `index` of the list under `key`, at the item's line."""
        value = self.data.get(key)
        line = value.line_of(index) if isinstance(value, YamlList) else self.line_of(key)
        return InputError(f"{self._label(key)}[{index}]: {message}", path=self.path, line=line)

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
        """A non-empty one-line string, optionally matching all of `pattern`."""
        if not self.has(key):
            if required:
                raise InputError(
                    f"missing required key {key!r}", path=self.path, line=self.line
                )
            return None
        value = self.data[key]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected {what}, got {kind(value)}")
        if _CONTROL.search(value):
            raise self.fail(key, f"{value!r} is not {what}: it holds a line break or a "
                                 "control character")
        # fullmatch, not match: a `$` pattern lets a trailing newline through.
        if pattern is not None and not pattern.fullmatch(value):
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

    def number(self, key: str, *, minimum: float = 0, maximum: float | None = None,
               integer: bool = False) -> float | None:
        """A finite number in [minimum, maximum] (a whole one if `integer`), or None when absent.

        `.inf` and `.nan` are YAML numbers too: a NaN compares false with every
        bound, so it is refused before the bounds are checked.
        """
        if not self.has(key):
            return None
        value = self.data[key]
        what = "a whole number" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"expected {what}, got {kind(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(key, f"expected a finite number, got {value}")
        if integer and value != int(value):
            raise self.fail(key, f"expected a whole number, got {value}")
        if value < minimum:
            raise self.fail(key, f"must be at least {_shown(minimum)}, got {_shown(value)}")
        if maximum is not None and value > maximum:
            raise self.fail(key, f"must be at most {_shown(maximum)}, got {_shown(value)}")
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
            if _CONTROL.search(item) or (pattern is not None and not pattern.fullmatch(item)) or (
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

    def command(self, key: str, *, allow_empty: bool = False) -> tuple[str, ...] | None:
        """A cmd/entrypoint: an argv list, or a string run by /bin/sh -c as Docker does.

        An empty list is only accepted with `allow_empty` (a spec's cmd or
        entrypoint, where it clears the inherited one); a program that is an
        empty string, or an argument with a NUL byte, can never be executed.
        """
        if key not in self.data:
            return None
        value = self.data[key]
        if isinstance(value, str) and value.strip():
            argv: tuple[str, ...] = ("/bin/sh", "-c", value)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            argv = tuple(value)
        else:
            raise self.fail(key, f"expected a list of strings or a string, got {kind(value)}")
        if not argv and not allow_empty:
            raise self.fail(key, "expected a command, got an empty list")
        if argv and not argv[0].strip():
            raise self.fail(key, "the program to run (the first item) is empty")
        if any("\x00" in arg for arg in argv):
            raise self.fail(key, "a command cannot hold a NUL byte")
        return argv

    def mapping(self, key: str) -> Fields | None:
        """A nested mapping as Fields, or None when absent."""
        if not self.has(key):
            return None
        return Fields(self.data[key], self.path, self._label(key), self.line_of(key))

    def _label(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key


def require_json(value: Any, path: Path, where: str, line: int) -> None:
    """Fail at the value's line unless it travels as JSON unchanged (vars, attributes).

    Vars reach Ansible (and attributes chef) as JSON. YAML can also give dates
    (an unquoted 2024-01-01), `!!binary`, `!!set`, `!!omap` pairs, `.inf`/`.nan`
    and non-string keys; those would pass planning and fail, or change, inside
    the container.

    Args:
        value: the value (YamlMap and YamlList keep their lines).
        path: the file it came from.
        where: how the value is named in the message (`vars.users[2]`).
        line: the line of the value.
    """
    if isinstance(value, dict):
        for key, item in value.items():
            key_line = value.line_of(key) if isinstance(value, YamlMap) else line
            if not isinstance(key, str):
                raise InputError(f"{where}: the key {key!r} is {kind(key)}; keys must be "
                                 "strings (quote it)", path=path, line=key_line)
            require_json(item, path, f"{where}.{key}", key_line)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            item_line = value.line_of(index) if isinstance(value, YamlList) else line
            require_json(item, path, f"{where}[{index}]", item_line)
    elif isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{where}: {value} is not a finite number (JSON has none)",
                         path=path, line=line)
    elif value is not None and not isinstance(value, str | int | float):
        hint = " (quote it to pass the text)" if isinstance(value, dt.date) else ""
        raise InputError(f"{where}: {kind(value)} cannot be passed on as JSON{hint}",
                         path=path, line=line)


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
    if isinstance(value, dt.datetime):
        return "a timestamp"
    if isinstance(value, dt.date):
        return "a date"
    if isinstance(value, bytes):
        return "binary data (!!binary)"
    if isinstance(value, set | frozenset):
        return "a set (!!set)"
    if isinstance(value, tuple):
        return "an ordered pair (!!omap or !!pairs)"
    return type(value).__name__
