"""A corpus of bad specs: each gets exit 2 and one line naming file and line.

The CLI runs with DOCKER_HOST pointing at a socket that does not exist, so a
spec error that is reported with exit 2 provably came before any Docker object
could be created (invariant 4).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from rolebake.errors import InputError
from rolebake.spec import Project, load_spec
from tests.conftest import REPO, run_cli

CORPUS = sorted((Path(__file__).parent / "bad_specs").glob("*.yml"))
NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/rolebake-test.sock"}


def _expectation(path: Path) -> tuple[str, int]:
    text = path.read_text()
    error = re.search(r"^# error: (.+)$", text, re.M)
    line = re.search(r"^# line: (\d+)$", text, re.M)
    assert error and line, f"{path.name} needs '# error:' and '# line:' headers"
    return error.group(1), int(line.group(1))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "images").mkdir(parents=True)
    shutil.copytree(REPO / "roles", root / "roles")
    shutil.copytree(REPO / "playbooks", root / "playbooks")
    (root / "roles" / "escape").symlink_to("/etc")
    (tmp_path / "outside.yml").write_text("- hosts: all\n")
    return root


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 20


@pytest.mark.parametrize("spec", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_spec_is_one_clear_line_and_exit_2(spec: Path, project: Path) -> None:
    message, line = _expectation(spec)
    shutil.copy(spec, project / "images" / spec.name)
    result = run_cli("build", spec.stem, cwd=project, env=NO_ENGINE, timeout=180)
    assert result.rc == 2, result.output
    assert "Traceback" not in result.output
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"error: images/{spec.name}:{line}: "), errors[0]
    assert message in errors[0], errors[0]
    assert "engine" not in result.output  # never got as far as the engine


@pytest.mark.parametrize("spec", CORPUS[:5], ids=[p.stem for p in CORPUS[:5]])
def test_library_raises_input_error(spec: Path, project: Path) -> None:
    shutil.copy(spec, project / "images" / spec.name)
    with pytest.raises(InputError) as caught:
        load_spec(Project(project), spec.stem)
    assert caught.value.exit_code == 2
    assert caught.value.line == _expectation(spec)[1]


def test_cycle_in_from_names_the_chain(project: Path) -> None:
    (project / "images" / "a.yml").write_text("from: b\nroles: [common]\n")
    (project / "images" / "b.yml").write_text("from: c\nroles: [common]\n")
    (project / "images" / "c.yml").write_text("from: a\nroles: [common]\n")
    result = run_cli("build", "a", cwd=project, env=NO_ENGINE, timeout=180)
    assert result.rc == 2
    assert "`from:` makes a cycle: a -> b -> c -> a" in result.stderr
    assert "images/a.yml:1:" in result.stderr


def test_unknown_image_suggests_a_name(project: Path) -> None:
    (project / "images" / "web.yml").write_text("from: rolebake/debian:bookworm\nroles: [web]\n")
    result = run_cli("build", "wbe", cwd=project, env=NO_ENGINE, timeout=180)
    assert result.rc == 2
    assert "no image spec 'wbe' (did you mean 'web'?)" in result.stderr


def test_unknown_variant(project: Path) -> None:
    (project / "images" / "web.yml").write_text(
        "from: rolebake/debian:bookworm\nroles: [web]\n"
        "variants:\n  dev: {roles_append: [devtools]}\n")
    result = run_cli("build", "web:prod", cwd=project, env=NO_ENGINE, timeout=180)
    assert result.rc == 2
    assert "image 'web' has no variant 'prod'; variants: dev" in result.stderr


def test_good_spec_reaches_the_engine_and_exits_4_without_one(project: Path) -> None:
    (project / "images" / "base.yml").write_text(
        "from: rolebake/debian:bookworm\nroles: [common]\n")
    result = run_cli("build", "base", cwd=project, env=NO_ENGINE, timeout=180)
    assert result.rc == 4, result.output
    assert "no container engine answers at unix:///nonexistent/rolebake-test.sock" in result.stderr
    assert "Traceback" not in result.output
