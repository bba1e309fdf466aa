"""Shared test plumbing: where the repository is, and how the CLI is run."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROLEBAKE = [sys.executable, "-m", "rolebake"]


@dataclass(frozen=True)
class Run:
    """What one CLI run returned."""

    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 900) -> Run:
    """Run `rolebake ARGS` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([*ROLEBAKE, *args], cwd=cwd, capture_output=True, text=True,
                          env=full_env, timeout=timeout, check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr)
