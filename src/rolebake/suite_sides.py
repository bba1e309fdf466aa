"""A pytest plugin for image suites: tests meaningful on one side only.

`rolebake parity` runs an image's suite against a container of the image and
against a VM the same roles were applied to. A few checks belong to one of them:
"the image carries no python3" is an image invariant, while a VM needs python3
to be managed at all. Such a test says so with a marker:

    @pytest.mark.rolebake_only("container")
    def test_no_python_in_the_image(host): ...

rolebake loads this plugin (`-p rolebake.suite_sides --rolebake-side=vm`) for
every suite it runs: verification runs on the container side, parity on both.
A test marked for the other side is skipped with a reason that says so, and
carries a `rolebake_only` property in the JUnit report, so parity can tell
this skip from any other.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MARKER", "PROPERTY", "SIDES", "skip_reason"]

MARKER = "rolebake_only"
PROPERTY = "rolebake_only"
SIDES = ("container", "vm")
_WORDS = {"container": "the container", "vm": "the VM"}


def skip_reason(only: str, side: str) -> str:
    """Why a test marked `rolebake_only(only)` did not run on `side`."""
    return f"only meaningful on {_WORDS[only]} (rolebake_only({only!r})); not run on {_WORDS[side]}"


def pytest_addoption(parser: Any) -> None:
    """`--rolebake-side`: which side this run checks."""
    parser.addoption("--rolebake-side", choices=SIDES, default=None,
                     help="which side of a parity run this is: tests marked "
                          "rolebake_only for the other side are skipped")


def pytest_configure(config: Any) -> None:
    """Register the marker, so suites pass under --strict-markers."""
    config.addinivalue_line(
        "markers", f"{MARKER}(side): meaningful on one side only ({' or '.join(SIDES)}); "
                   "rolebake skips it on the other, saying so")


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Skip tests marked for the other side.

    Raises:
        pytest.UsageError: A marker names no side, or another one (the suite is wrong).
    """
    import pytest

    side = config.getoption("rolebake_side")
    for item in items:
        marker = item.get_closest_marker(MARKER)
        if marker is None:
            continue
        only = marker.args[0] if len(marker.args) == 1 and not marker.kwargs else None
        if only not in SIDES:
            raise pytest.UsageError(
                f"{item.nodeid}: {MARKER} takes one side, {' or '.join(map(repr, SIDES))}; "
                f"got {marker.args or marker.kwargs}")
        item.user_properties.append((PROPERTY, only))
        if side is not None and side != only:
            item.add_marker(pytest.mark.skip(reason=skip_reason(only, side)))
