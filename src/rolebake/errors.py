"""One error tree for rolebake; every error carries its exit code.

Only the CLI turns these into text and an exit status (DESIGN.md, "Exit codes").
"""

from __future__ import annotations

import os
from pathlib import Path


class RolebakeError(Exception):
    """Base of every error rolebake raises on purpose. Catch this one."""

    exit_code = 1

    def __init__(self, message: str, *, details: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.details}" if self.details else self.message


class InputError(RolebakeError):
    """Bad input: a spec, role, playbook, vars file, tag or base image (exit 2)."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        line: int | None = None,
        hint: str = "",
    ) -> None:
        location = ""
        if path is not None:
            location = f"{_display_path(path)}:{line}: " if line else f"{_display_path(path)}: "
        super().__init__(location + message, hint=hint)
        self.path = path
        self.line = line


class BuildFailed(RolebakeError):
    """Building or provisioning a layer failed (exit 1)."""

    exit_code = 1


class RegistryError(BuildFailed):
    """A registry refused or could not be reached: a push, a pull, a lookup (exit 1).

    The message carries the registry's own words; never credentials.
    """


class VMError(BuildFailed):
    """Preparing, booting or reaching a parity VM failed (exit 1).

    `details` carries the evidence: the tail of a command's output or of the
    serial console. An interrupt still surfaces as the CLI's Interrupted.
    """


class SnapshotError(BuildFailed):
    """A snapshot command failed or printed something we cannot parse (exit 1)."""


class TestsFailed(RolebakeError):
    """The image's testinfra suite or metadata checks failed (exit 3)."""

    exit_code = 3
    __test__ = False  # keep pytest from collecting this class


class EngineUnavailable(RolebakeError):
    """No container engine answers (exit 4)."""

    exit_code = 4


class ParityDifferent(RolebakeError):
    """A VM and a container built from the same roles differ (exit 5)."""

    exit_code = 5


class InternalError(BuildFailed):
    """An exception rolebake did not expect (a bug), caught where it can still be reported (exit 1).

    A `--jobs` worker turns one into this so that it fails its own layer only:
    the other layers finish and the report is still written. The original
    exception is the `__cause__`, for `--debug`.
    """

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"internal error: {type(exc).__name__}: {exc}",
                         hint="run again with --debug for the traceback, and please report it")


class Interrupted(RolebakeError):
    """The build was stopped by SIGINT (130) or SIGTERM (143).

    By the time it reaches the CLI every tag the run had moved is put back
    (`build.Builder.roll_back`); when some could not be, `tags_stayed` says
    which and why, and the message no longer claims that no tag moved.
    """

    def __init__(self, signal_name: str = "SIGINT") -> None:
        super().__init__(f"interrupted by {signal_name}; cleaned up, no tag moved")
        self.signal_name = signal_name
        self.exit_code = 143 if signal_name == "SIGTERM" else 130

    def tags_stayed(self, stayed: dict[str, str]) -> None:
        """Say which tags the run moved and could not put back, {tag: why}."""
        if not stayed:
            return
        self.message = (f"interrupted by {self.signal_name}; cleaned up, but {len(stayed)} "
                        f"tag(s) moved by this build stay moved")
        self.details = "\n".join(f"{ref}: {why}" for ref, why in stayed.items())
        self.args = (self.message,)


def _display_path(path: Path | str) -> str:
    """Show paths relative to the working directory when they are below it.

    A file name with a line break or another unprintable character is shown
    quoted and escaped, so an error stays one line.
    """
    p = Path(path)
    shown = str(p)
    # Lexically first, so that a link is named as the link, not as what it points to;
    # resolving (a link loop, a name too long) must never break the error itself.
    for form in (lambda q: Path(os.path.abspath(q)), Path.resolve):
        try:
            shown = str(form(p).relative_to(form(Path.cwd())))
            break
        except (ValueError, OSError, RuntimeError):
            continue
    return shown if shown.isprintable() else repr(shown)
