"""One error tree for rolebake; every error carries its exit code.

Only the CLI turns these into text and an exit status (DESIGN.md, "Exit codes").
"""

from __future__ import annotations

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


class Interrupted(RolebakeError):
    """The build was stopped by SIGINT (130) or SIGTERM (143)."""

    def __init__(self, signal_name: str = "SIGINT") -> None:
        super().__init__(f"interrupted by {signal_name}; cleaned up, no tag moved")
        self.exit_code = 143 if signal_name == "SIGTERM" else 130


def _display_path(path: Path | str) -> str:
    """Show paths relative to the working directory when they are below it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)
