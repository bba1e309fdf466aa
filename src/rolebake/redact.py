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

A value is also matched encoded (`encoded_forms`): base64 (standard and
URL-safe, with and without padding, and the part of it that stays the same
when the value sits at any of the three byte offsets inside a longer base64
stream), hex (lower and upper case) and URL-encoded. The secret scan of a
layer (`secrets.scan_image`) looks for the same forms (`value_forms`).

Values are registered as soon as they are parsed (`register`: the spec's
sensitive vars, `--secret` files, the vault password, decrypted vault
values), before anything that could print them runs, and whatever Redactor
the CLI installs later keeps them.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import io
import json
import re
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

import yaml

MIN_LENGTH = 4
REDACTED = "********"


class Redactor:
    """Replaces every secret value, in any of its forms, with REDACTED."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        """Match `values` (the plain secrets; their lines and escaped forms are derived)."""
        self.values: tuple[str, ...] = tuple(dict.fromkeys(values))
        needles: set[str] = set()
        for value in self.values:
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
    """The value, each of its lines, and each of those as JSON, YAML and repr escape them.

    The whole value (as given and stripped) also in its encoded forms.
    """
    bases = {value, value.strip()}
    bases.update(line.strip() for line in value.splitlines())
    for base in bases:
        if len(base.strip()) < MIN_LENGTH:
            continue  # padding does not make a short value any less common
        yield from _escaped(base)
    for whole in {value, value.strip()}:
        if len(whole.strip()) >= MIN_LENGTH:
            yield from encoded_forms(whole)


def _escaped(base: str) -> Iterator[str]:
    yield base
    yield json.dumps(base)[1:-1]
    yield json.dumps(base, ensure_ascii=False)[1:-1]
    yield repr(base)[1:-1]
    for allow_unicode in (False, True):
        yield _yaml_quoted(base, allow_unicode)


# A base64 core shorter than this (the value at an offset inside a longer stream)
# would match by chance in any base64 text.
MIN_B64_CORE = 6


def encoded_forms(value: str) -> list[str]:
    """`value` base64-, hex- and URL-encoded, as a role's filter or a tool could write it.

    Base64: standard and URL-safe alphabets, with and without padding, and for
    each byte offset 0-2 the run of characters that encodes only the value's
    own bytes when it is embedded in a longer stream (`b64encode` of a file
    that holds the secret somewhere inside). Hex: lower and upper case. URL:
    `quote` and `quote_plus`, as Jinja's `urlencode` and most libraries write it.
    """
    raw = value.encode("utf-8")
    forms: list[str] = []
    for alphabet in (b"+/", b"-_"):
        whole = base64.b64encode(raw, altchars=alphabet).decode("ascii")
        forms += [whole, whole.rstrip("=")]
        for offset in range(3):
            encoded = base64.b64encode(b"\0" * offset + raw, altchars=alphabet).decode("ascii")
            # Characters that take bits from the bytes before the value, or after it
            # (the last partial group), differ from stream to stream: left out.
            start = -(-8 * offset // 6)
            end = (8 * (offset + len(raw))) // 6
            core = encoded[start:end]
            if len(core) >= MIN_B64_CORE:
                forms.append(core)
    hexed = binascii.hexlify(raw).decode("ascii")
    forms += [hexed, hexed.upper()]
    forms += [urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value, safe=""),
              urllib.parse.quote(value)]
    return list(dict.fromkeys(f for f in forms if len(f) >= MIN_LENGTH))


# The scan fails a build on a hit, so an encoded form must be long enough not to turn
# up by chance in a layer full of checksums (dpkg's md5sums are hex, 8 hex characters
# are only 32 bits); output redaction keeps the shorter ones: hiding costs nothing there.
MIN_SCANNED_ENCODING = 10


def value_forms(value: str) -> list[str]:
    """Every form of the whole `value` the layer scan looks for: plain, escaped, encoded."""
    plain = [*_escaped(value), *_escaped(value.strip())]
    encoded = [form for form in (*encoded_forms(value), *encoded_forms(value.strip()))
               if len(form) >= MIN_SCANNED_ENCODING or form in plain]
    return list(dict.fromkeys(f for f in (*plain, *encoded) if len(f) >= MIN_LENGTH))


def _yaml_quoted(text: str, allow_unicode: bool) -> str:
    """The inside of the double-quoted YAML scalar PyYAML (and so Ansible) writes for `text`."""
    dumped = yaml.dump(text, default_style='"', allow_unicode=allow_unicode,
                       width=1 << 30, explicit_end=False)
    return dumped.strip().removesuffix("...").strip()[1:-1]


# The one installed Redactor ------------------------------------------------------------

class _Installed:
    """Where the one installed Redactor is kept, with the values registered so far."""

    redactor = Redactor()
    registered: tuple[str, ...] = ()
    lock = threading.Lock()


def install(redactor: Redactor) -> None:
    """Make `redactor` the one every output of this process goes through (the CLI calls it).

    Values registered before (`register`) stay hidden too.
    """
    with _Installed.lock:
        extra = [v for v in _Installed.registered if v not in redactor.values]
        _Installed.redactor = Redactor([*redactor.values, *extra]) if extra else redactor


def register(values: Iterable[str]) -> None:
    """Hide these values from now on, as soon as they are parsed (before any Redactor is built).

    The spec's sensitive vars, `--secret` files, the vault password and decrypted
    vault values come through here the moment they are read, so an error raised
    while the rest is parsed cannot print them.
    """
    new = [v for v in values if isinstance(v, str) and len(v.strip()) >= MIN_LENGTH]
    with _Installed.lock:
        new = [v for v in new if v not in _Installed.registered]
        if not new:
            return
        _Installed.registered = (*_Installed.registered, *new)
        _Installed.redactor = Redactor([*_Installed.redactor.values, *new])


def reset() -> None:
    """Forget every value: a Redactor that hides nothing (the CLI, after a command)."""
    with _Installed.lock:
        _Installed.registered = ()
        _Installed.redactor = Redactor()


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
