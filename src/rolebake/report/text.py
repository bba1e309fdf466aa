"""Turning rolebake's words into rich text safely: redacted first, never read as markup.

The table and progress modules build everything they print through these
helpers, so two promises hold in one place: every string passes through a
`redact` (by default the Redactor the CLI installed, see `rolebake.redact`)
before it can reach a screen or a log, and user text (role names like
`[web]`, task names with brackets) is always a `rich.text.Text`, which rich
never parses as console markup.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping

from rich.console import Console, RenderableType
from rich.text import Text

from rolebake import redact

Redact = Callable[[str], str]
"""Hides secrets in a string; every printed string passes through one."""

Part = tuple[str, str]
"""A piece of a line and its rich style ("" for none)."""

# One palette for every view, so a word looks the same in a table and in progress lines.
STYLES: Mapping[str, str] = {
    "ok": "green",
    "passed": "green",
    "HIT": "green",
    "cached": "blue",
    "skipped": "dim",
    "equal": "dim",
    "changed": "yellow",
    "expected": "yellow",
    "ids-shifted": "yellow",
    "recommends": "magenta",
    "MISS": "yellow",
    "FAILED": "bold red",
    "failed": "bold red",
    "error": "bold red",
    "different": "bold red",
}
LAYER_STYLE = "cyan"
DIM = "dim"

# Wide enough that a table never wraps a row: logs are grepped line by line.
NO_WRAP_WIDTH = 10_000


def installed(text: str) -> str:
    """Redact with the Redactor the CLI installed: every view's default."""
    return redact.text(text)


def style_of(word: str) -> str:
    """The palette's style for a status word, or no style."""
    return STYLES.get(word, "")


def styled(parts: Iterable[Part], redact: Redact) -> Text:
    """One line of text from styled parts, redacted as a whole.

    Args:
        parts: Pieces of the line with their styles; joined they are the plain line.
        redact: Hides secrets.

    Returns:
        The styled line, or the redacted plain line when redaction changed anything.
    """
    parts = list(parts)
    plain = "".join(text for text, _ in parts)
    safe = redact(plain)
    if safe != plain:
        # A secret may straddle two parts, which per-part redaction would miss:
        # give up the colours rather than risk printing it.
        return Text(safe)
    text = Text()
    for piece, style in parts:
        text.append(piece, style=style or None)
    return text


def cell(value: str, redact: Redact, style: str = "") -> Text:
    """A table cell: the redacted value as literal text on one line, optionally styled."""
    # One row, one line: logs are read (and grepped) line by line.
    return Text(" ".join(redact(value).splitlines()), style=style)


def render_lines(renderable: RenderableType, *, color: bool, redact: Redact,
                 width: int = NO_WRAP_WIDTH) -> list[str]:
    """Render with rich into lines of text, for the CLI to print wherever it prints.

    Args:
        renderable: A rich table or text.
        color: Emit colour and bold (ANSI codes); only for a terminal.
        redact: Applied once more to every rendered line, so that a secret split
            across two cells of a row is caught too.
        width: Line width rich lays out for.

    Returns:
        The lines, trailing spaces removed, without newlines.
    """
    buffer = io.StringIO()
    # force_terminal=False also wins over FORCE_COLOR/TTY_COMPATIBLE in the
    # environment: a pipe or a file never gets an escape code.
    console = Console(file=buffer, width=width, force_terminal=color,
                      color_system="standard" if color else None, markup=False,
                      emoji=False, highlight=False, soft_wrap=False, force_jupyter=False,
                      force_interactive=False, legacy_windows=False)
    console.print(renderable)
    return [redact(line.rstrip()) for line in buffer.getvalue().splitlines()]


def duration(seconds: float) -> str:
    """`12.3s` under a minute, `4m05s` above."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"
