"""Tests meaningful on one side of a parity run only: the `rolebake_only` marker.

The suites here run for real, through the same pytest subprocess rolebake uses,
against testinfra's `local://` backend (this machine): no engine needed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rolebake.parity.diff import ParityReport
from rolebake.parity.run import ParityResult
from rolebake.report import tables
from rolebake.verify import TestCase, suite_for_host

SUITE = '''\
import pytest


def test_everywhere(host):
    assert host.run("true").rc == 0


@pytest.mark.rolebake_only("container")
def test_no_python_in_the_image(host):
    assert True


@pytest.mark.rolebake_only("vm")
def test_python_to_manage_it(host):
    assert True
'''


def _suite(root: Path, text: str) -> Path:
    tests = root / "tests" / "images" / "sides"
    tests.mkdir(parents=True)
    (tests / "test_sides.py").write_text(text)
    return tests


def _by_name(cases: list[TestCase]) -> dict[str, TestCase]:
    return {c.name.split("[")[0]: c for c in cases}


@pytest.mark.parametrize(("side", "other"), [("vm", "container"), ("container", "vm")])
def test_a_test_for_the_other_side_is_skipped_saying_so(tmp_path: Path, side: str,
                                                        other: str) -> None:
    tests = _suite(tmp_path, SUITE)
    # --strict-markers: the plugin registers the marker, so strict suites accept it.
    cases = _by_name(suite_for_host(tests, "local://", tmp_path, ("--strict-markers",),
                                    side=side))
    mine = "test_no_python_in_the_image" if side == "container" else "test_python_to_manage_it"
    theirs = "test_python_to_manage_it" if side == "container" else "test_no_python_in_the_image"
    assert cases["test_everywhere"].outcome == "passed"
    assert cases["test_everywhere"].only == ""
    assert (cases[mine].outcome, cases[mine].only) == ("passed", side)
    assert (cases[theirs].outcome, cases[theirs].only) == ("skipped", other)
    words = {"container": "the container", "vm": "the VM"}
    assert cases[theirs].message == (f"only meaningful on {words[other]} "
                                     f"(rolebake_only('{other}')); not run on {words[side]}")


def test_verification_runs_the_container_side(tmp_path: Path) -> None:
    # `rolebake build` and `rolebake test` verify a container: VM-only tests skip there.
    cases = _by_name(suite_for_host(_suite(tmp_path, SUITE), "local://", tmp_path))
    assert cases["test_python_to_manage_it"].outcome == "skipped"
    assert cases["test_no_python_in_the_image"].outcome == "passed"


@pytest.mark.parametrize("marker", ['"docker"', 'side="vm"'])
def test_a_marker_without_one_known_side_is_an_error(tmp_path: Path, marker: str) -> None:
    tests = _suite(tmp_path, f"import pytest\n\n\n@pytest.mark.rolebake_only({marker})\n"
                             "def test_x(host):\n    pass\n")
    cases = suite_for_host(tests, "local://", tmp_path, side="vm")
    assert [(c.name, c.outcome) for c in cases] == [("pytest", "error")]
    assert "rolebake_only takes one side, 'container' or 'vm'" in cases[0].message


def _result(container: list[TestCase], vm: list[TestCase]) -> ParityResult:
    return ParityResult(image="web", image_id="sha256:abc", vm="qemu",
                        report=ParityReport(items=()), container_tests=container,
                        vm_tests=vm)


def _case(name: str, outcome: str, only: str = "") -> TestCase:
    return TestCase("test_web.py", name, outcome, only=only)


@pytest.mark.parametrize(("container", "vm", "differ"), [
    # Run on its side, skipped on the other: agreed.
    ("passed", "skipped", False),
    ("skipped", "skipped", False),  # skipped on its own side too (its own skip mark)
    # Failed where it is meaningful: a difference like any failure.
    ("failed", "skipped", True),
    ("error", "skipped", True),
    # Ran on the other side too (a suite run without the plugin): not what was asked.
    ("passed", "passed", True),
    (None, "skipped", True),  # never ran on its side
])
def test_parity_compares_a_marked_test_on_its_side_only(container: str | None, vm: str,
                                                        differ: bool) -> None:
    name = "test_no_python_in_the_image"
    result = _result([_case(name, container, "container")] if container else [],
                     [_case(f"{name}[ssh://root@vm]", vm, "container")])
    assert result.tests_differ == ([name] if differ else [])
    assert result.ok is not differ


def test_unmarked_tests_must_still_agree() -> None:
    result = _result([_case("test_a", "passed"), _case("test_b", "passed")],
                     [_case("test_a", "passed"), _case("test_b", "skipped")])
    assert result.tests_differ == ["test_b"]


def test_side_by_side_says_why_a_test_was_skipped() -> None:
    lines = tables.tests_side_by_side(
        [_case("test_no_python", "passed", "container"), _case("test_vm", "skipped", "vm")],
        [_case("test_no_python", "skipped", "container"), _case("test_vm", "passed", "vm")])
    assert [line.split() for line in lines] == [
        ["test", "container", "vm"],
        ["test_no_python", "passed", "skipped", "(container", "only)"],
        ["test_vm", "skipped", "(vm", "only)", "passed"],
    ]


def test_json_names_the_side() -> None:
    assert _case("t", "skipped", "vm").to_dict()["only"] == "vm"
    assert _case("t", "passed").to_dict()["only"] is None
