"""Hiding secret values in everything rolebake writes: one Redactor, installed once by the CLI.

Every output goes through the installed Redactor: the CLI's stdout and stderr
(progress, reports, error details, `--debug` tracebacks, "internal error"
lines), the build and parity logs, `--json` (redacted before it is
serialised), JUnit, scaffold records and the tests written from them.

A value is matched as it is, line by line when it has several lines (Ansible's
YAML log indents a multi-line value and prints each line on its own), and in
the escaped forms that JSON, YAML and Python's repr give it, so a secret with
a quote, a backslash, a tab or a non-ASCII character is still caught in text
someone else serialised; a tab also matches the spaces Ansible's YAML log
expands it to. Values shorter than MIN_LENGTH characters are never
matched: they would hide common words everywhere and hide nothing.
"""

from __future__ import annotations

import codecs
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

import yaml

MIN_LENGTH = 4
REDACTED = "********"


class Redactor:
    """Replaces every secret value, in any of its forms, with REDACTED."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        """Match `values` (the plain secrets; their lines and escaped forms are derived)."""
        needles: set[str] = set()
        for value in values:
            needles.update(form for form in _forms(value) if len(form) >= MIN_LENGTH)
        # Longest first only for a stable order; overlaps are merged in text().
        self.needles: tuple[str, ...] = tuple(sorted(needles, key=lambda n: (-len(n), n)))
        # Ansible's YAML log expands tabs in block scalars (`str.expandtabs`), so a tab
        # becomes 1 to 8 spaces, depending on the column the value starts at.
        self._tabbed = {needle: re.compile(
            r"(?:\t| {1,8})".join(re.escape(part) for part in needle.split("\t")))
            for needle in self.needles if "\t" in needle}

    def __bool__(self) -> bool:
        """True when there is anything to hide."""
        return bool(self.needles)

    def text(self, text: str) -> str:
        """`text` with every occurrence of every form of every secret replaced.

        Occurrences that overlap or touch (two secrets sharing characters, one
        inside another) become one REDACTED, so no part of either is left.
        """
        if not self.needles or not text:
            return text
        spans: list[tuple[int, int]] = []
        for needle in self.needles:
            pattern = self._tabbed.get(needle)
            if pattern is not None:
                match = pattern.search(text)
                while match is not None:
                    spans.append(match.span())
                    match = pattern.search(text, match.start() + 1)
                continue
            start = text.find(needle)
            while start != -1:
                spans.append((start, start + len(needle)))
                start = text.find(needle, start + 1)
        if not spans:
            return text
        spans.sort()
        merged: list[list[int]] = [list(spans[0])]
        for start, end in spans[1:]:
            if start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        pieces: list[str] = []
        position = 0
        for start, end in merged:
            pieces += [text[position:start], REDACTED]
            position = end
        pieces.append(text[position:])
        return "".join(pieces)

    def data(self, value: Any) -> Any:
        """A copy of JSON-like data with every string (keys too) redacted.

        Redact before serialising: json.dumps escapes a quote, a backslash, a
        tab or a non-ASCII character, and the escaped text no longer holds
        the value as it was given.
        """
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.data(k): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value


def _forms(value: str) -> Iterator[str]:
    """The value, each of its lines, and each of those as JSON, YAML and repr escape them."""
    bases = {value, value.strip()}
    bases.update(line.strip() for line in value.splitlines())
    for base in bases:
        if len(base.strip()) < MIN_LENGTH:
            continue  # padding does not make a short value any less common
        yield base
        yield json.dumps(base)[1:-1]
        yield json.dumps(base, ensure_ascii=False)[1:-1]
        yield repr(base)[1:-1]
        for allow_unicode in (False, True):
            yield _yaml_quoted(base, allow_unicode)


def _yaml_quoted(text: str, allow_unicode: bool) -> str:
    """The inside of the double-quoted YAML scalar PyYAML (and so Ansible) writes for `text`."""
    dumped = yaml.dump(text, default_style='"', allow_unicode=allow_unicode,
                       width=1 << 30, explicit_end=False)
    return dumped.strip().removesuffix("...").strip()[1:-1]


# The one installed Redactor ------------------------------------------------------------

class _Installed:
    """Where the one installed Redactor is kept."""

    redactor = Redactor()


def install(redactor: Redactor) -> None:
    """Make `redactor` the one every output of this process goes through (the CLI calls it)."""
    _Installed.redactor = redactor


def current() -> Redactor:
    """The installed Redactor (one that hides nothing until the CLI installs one)."""
    return _Installed.redactor


def text(value: str) -> str:
    """Redact `value` with the installed Redactor."""
    return _Installed.redactor.text(value)


def data(value: Any) -> Any:
    """Redact JSON-like data with the installed Redactor, before it is serialised."""
    return _Installed.redactor.data(value)


class RedactingStream(io.TextIOBase):
    """A text stream that passes every write through the installed Redactor.

    The CLI puts one over stdout and over stderr for the whole command, so
    what nothing else redacts (a traceback, a library's warning) is still
    caught. It looks like the TextIOWrapper it replaces, because libraries
    rolebake runs in-process expect one: Ansible's Display (imported to
    decrypt vaulted files) locks `buffer.write` for fork-safety and calls
    `reconfigure`, and warns when either is missing. Its `buffer` is no way
    around it: bytes written there are decoded and redacted like text (click
    writes there when the text stream does not suit it).
    """

    def __init__(self, inner: TextIO) -> None:
        """Wrap `inner`."""
        super().__init__()
        self.inner = inner
        self._buffer: RedactingBuffer | None = None

    @property
    def buffer(self) -> RedactingBuffer:
        """The binary face of this stream: what is written there is redacted too."""
        if self._buffer is None:
            self._buffer = RedactingBuffer(self)
        return self._buffer

    def reconfigure(self, **settings: Any) -> None:
        """Pass TextIOWrapper settings (`errors=`, `line_buffering=`) to the wrapped stream."""
        reconfigure = getattr(self.inner, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(**settings)

    def write(self, s: str) -> int:
        """Write `s`, redacted; report it as written whole."""
        self.inner.write(_Installed.redactor.text(s))
        return len(s)

    def flush(self) -> None:
        """Flush the wrapped stream (and what its buffer holds back)."""
        if self._buffer is not None:
            self._buffer.drain()
        self.inner.flush()

    def isatty(self) -> bool:
        """Whether the wrapped stream is a terminal (the live progress view asks)."""
        try:
            return self.inner.isatty()
        except (AttributeError, ValueError):
            return False

    def fileno(self) -> int:
        """The wrapped stream's descriptor (terminal size queries need it)."""
        return self.inner.fileno()

    def writable(self) -> bool:
        """Always: it is an output stream."""
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        """The wrapped stream's encoding."""
        return str(getattr(self.inner, "encoding", None) or "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        """The wrapped stream's error handler."""
        return getattr(self.inner, "errors", None)


class RedactingBuffer(io.BufferedIOBase):
    """The bytes side of a RedactingStream: decoded, redacted and written as its text.

    Decoded incrementally and passed on a line at a time (the rest on
    `flush`), so a character or a secret split over two writes stays whole
    for the Redactor; the text goes through the stream's own `write`.
    """

    def __init__(self, stream: RedactingStream) -> None:
        """Write into `stream`."""
        super().__init__()
        self._stream = stream
        try:
            decoder = codecs.getincrementaldecoder(stream.encoding)
        except LookupError:
            decoder = codecs.getincrementaldecoder("utf-8")
        self._decoder = decoder(errors="replace")
        self._pending = ""

    def write(self, b: Any) -> int:
        """Write bytes (decoded, then redacted, whole lines); report them as written whole."""
        data = bytes(b)
        self._pending += self._decoder.decode(data)
        lines, newline, rest = self._pending.rpartition("\n")
        if newline:
            self._pending = rest
            self._stream.write(lines + newline)
        return len(data)

    def flush(self) -> None:
        """Pass on what is held back, and flush the stream."""
        self._stream.flush()

    def drain(self) -> None:
        """Pass on what is held back (the stream's own flush calls it)."""
        if self._pending:
            text, self._pending = self._pending, ""
            self._stream.write(text)

    def writable(self) -> bool:
        """Always: it is an output stream."""
        return True

    def isatty(self) -> bool:
        """Whether the stream is a terminal."""
        return self._stream.isatty()

    def fileno(self) -> int:
        """The stream's descriptor."""
        return self._stream.fileno()
