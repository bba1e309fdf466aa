"""The suite's own layout: `make test` collects every tier in one pytest run.

pytest's default import mode names a test module by its file name alone, so two
tiers holding the same test file name stop the whole run at collection (the
unit tier alone, a bare `pytest`, does not see it).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_file_name() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        seen[path.name].append(str(path.relative_to(TESTS)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert clashes == {}
