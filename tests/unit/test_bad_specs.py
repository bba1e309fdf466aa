"""A corpus of bad specs: each gets exit 2 and one line naming file and line.

Each case is either `bad_specs/<case>.yml` (copied to images/<case>.yml) or a
folder `bad_specs/<case>/` copied over the project root (links kept), for cases
that need more than one file: two specs sharing a tag, a spec that is a folder.
Headers, in the .yml or in the folder's CASE file:

    # error: the text the one `error:` line must contain, after "file:line: "
    # line: the line it names; `-` for an error about the file as a whole
    # target: what to build (default: the case name; `(all)` builds everything)
    # file: the file it names (default: images/<case>.yml)

Every case runs through the real command (`rolebake build`, click's
CliRunner in this process, so the whole corpus stays fast) with DOCKER_HOST
pointing at a socket that does not exist: exit 2 then provably came before any
Docker object could exist (invariant 4). A sample also runs as a subprocess,
as a user runs it.
"""

from __future__ import annotations

import os
import re
import shutil
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rolebake import yamlfile
from rolebake.cli import main
from rolebake.errors import InputError
from rolebake.load import load_spec, plan_build, plan_secrets
from rolebake.spec import Project
from tests.conftest import REPO, run_cli

CORPUS_DIR = Path(__file__).parent / "bad_specs"
NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/rolebake-test.sock"}


@dataclass(frozen=True)
class Case:
    """One bad spec and what rolebake must say about it."""

    name: str
    source: Path
    error: str
    line: int | None
    target: str | None
    file: str

    def install(self, root: Path) -> None:
        """Put the case's files into the project at `root`."""
        if self.source.is_dir():
            shutil.copytree(self.source, root, symlinks=True, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("CASE"))
        else:
            shutil.copy(self.source, root / "images" / self.source.name)

    @property
    def prefix(self) -> str:
        """How the error line starts: `error: images/x.yml:4: `."""
        return f"error: {self.file}:{self.line}: " if self.line else f"error: {self.file}: "


def _case(source: Path) -> Case:
    header = source / "CASE" if source.is_dir() else source
    text = header.read_bytes().decode("utf-8", errors="replace")
    fields = dict(re.findall(r"^# (error|line|target|file): (.+)$", text, re.M))
    assert "error" in fields and "line" in fields, f"{source.name} needs # error: and # line:"
    name = source.name if source.is_dir() else source.stem
    target = fields.get("target", name)
    return Case(
        name=name,
        source=source,
        error=fields["error"],
        line=None if fields["line"] == "-" else int(fields["line"]),
        target=None if target == "(all)" else target,
        file=fields.get("file", f"images/{name}.yml"),
    )


CORPUS = [_case(p) for p in sorted(CORPUS_DIR.iterdir()) if p.suffix == ".yml" or p.is_dir()]
BY_NAME = {case.name: case for case in CORPUS}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "images").mkdir(parents=True)
    shutil.copytree(REPO / "roles", root / "roles")
    shutil.copytree(REPO / "playbooks", root / "playbooks")
    (root / "roles" / "escape").symlink_to("/etc")
    (tmp_path / "outside.yml").write_text("- hosts: all\n")
    return root


def _build(project: Path, target: str | None, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """`rolebake build TARGET` in this process: the real exit code and stderr."""
    monkeypatch.chdir(project)  # errors name files relative to the working directory
    result = CliRunner().invoke(main, ["build", *([target] if target else [])], env=NO_ENGINE)
    return result.exit_code, result.stderr + result.stdout


def _assert_one_clear_line(case: Case, rc: int, output: str) -> None:
    assert rc == 2, output
    assert "Traceback" not in output and "internal error" not in output, output
    errors = [x for x in output.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, output
    assert len(output.strip().splitlines()) == 1, output  # no details, no hint lines either
    assert errors[0].startswith(case.prefix), errors[0]
    assert case.error in errors[0], errors[0]
    assert "engine" not in output  # never got as far as the engine


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 80


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_bad_spec_is_one_clear_line_and_exit_2(case: Case, project: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    case.install(project)
    rc, output = _build(project, case.target, monkeypatch)
    _assert_one_clear_line(case, rc, output)


SAMPLE = ["alias-bomb", "nesting-deep-list", "key-unhashable-list", "tag-in-two-specs",
          "not-utf8", "spec-is-a-folder", "tag-is-own-parent", "meta-dependency-cycle",
          "chef-with-groups"]


@pytest.mark.parametrize("name", SAMPLE)
def test_the_cli_process_says_the_same(name: str, project: Path) -> None:
    case = BY_NAME[name]
    case.install(project)
    result = run_cli("build", *([case.target] if case.target else []), cwd=project,
                     env=NO_ENGINE, timeout=180)
    _assert_one_clear_line(case, result.rc, result.output)


@pytest.mark.parametrize("case", CORPUS[:5], ids=[c.name for c in CORPUS[:5]])
def test_library_raises_input_error(case: Case, project: Path) -> None:
    case.install(project)
    with pytest.raises(InputError) as caught:
        plan_build(Project(project), [case.target] if case.target else [])
    assert caught.value.exit_code == 2
    assert caught.value.line == case.line


class _Counting(yamlfile._LineLoader):
    """The spec loader, counting the nodes it composes and the objects it constructs."""

    composed = 0
    constructed = 0

    def compose_node(self, parent: object, index: object) -> object:
        type(self).composed += 1
        return super().compose_node(parent, index)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> object:
        type(self).constructed += 1
        return super().construct_object(node, deep)


def test_alias_bomb_is_refused_after_bounded_work(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bounded by work, not by the clock: the loader stops while composing, after
    # visiting only the nodes written in the file, and constructs nothing.
    monkeypatch.setattr(yamlfile, "_LineLoader", _Counting)
    monkeypatch.setattr(_Counting, "composed", 0)
    monkeypatch.setattr(_Counting, "constructed", 0)
    with pytest.raises(InputError, match="aliases expand to more than 100000 values"):
        yamlfile.load_yaml(BY_NAME["alias-bomb"].source)
    assert 0 < _Counting.composed <= 200
    assert _Counting.constructed == 0


def test_aliases_below_the_cap_load_and_expand(tmp_path: Path) -> None:
    # Four levels of nine: 9**4 = 6561 leaves, well below the cap.
    text = "l0: &l0 [a, a, a, a, a, a, a, a, a]\n" + "".join(
        f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 5))
    path = tmp_path / "ok.yml"
    path.write_text(text)
    data = yamlfile.plain(yamlfile.load_yaml(path))

    def leaves(value: object) -> int:
        return sum(leaves(x) for x in value) if isinstance(value, list) else 1

    assert leaves(data["l4"]) == 9 ** 5
    assert data["l4"][8][8][8][8] == ["a"] * 9


def test_nesting_up_to_the_cap_loads(tmp_path: Path) -> None:
    path = tmp_path / "deep.yml"
    path.write_text("[" * yamlfile.MAX_DEPTH + "]" * yamlfile.MAX_DEPTH + "\n")
    data, depth = yamlfile.load_yaml(path), 0
    while isinstance(data, list):
        data, depth = (data[0] if data else None), depth + 1
    assert depth == yamlfile.MAX_DEPTH
    path.write_text("[" * (yamlfile.MAX_DEPTH + 1) + "]" * (yamlfile.MAX_DEPTH + 1) + "\n")
    with pytest.raises(InputError, match="nested deeper than"):
        yamlfile.load_yaml(path)


VALID = {
    "bom": "\ufefffrom: rolebake/debian:bookworm\nroles: [common]\n",
    "crlf": "from: rolebake/debian:bookworm\r\nroles: [common]\r\n",
    "unicode-values": "from: rolebake/debian:bookworm\nroles: [common]\nvars: {motd: 'Grüße 👋'}\n"
                      "config:\n  labels: {org.opencontainers.image.title: 'Liège'}\n",
    "anchors": "from: rolebake/debian:bookworm\nroles: [common]\nvars:\n"
               "  base: &b {a: 1}\n  more: {<<: *b, c: 2}\n",
    "empty-cmd-clears": "from: rolebake/debian:bookworm\nroles: [common]\n"
                        "config: {entrypoint: [], cmd: []}\n",
    "quoted-date": "from: rolebake/debian:bookworm\nroles: [common]\nvars: {day: '2024-01-01'}\n",
    "registry-host-tag": "from: rolebake/debian:bookworm\nroles: [common]\n"
                         "tags: ['localhost:5000/team/web:1']\n",
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_odd_but_valid_specs_still_plan(name: str, project: Path) -> None:
    (project / "images" / f"{name}.yml").write_bytes(VALID[name].encode("utf-8"))
    plan = plan_build(Project(project), [name])
    assert [layer.id for layer in plan.layers] == [name]


def test_from_a_variant_builds_on_that_variant_layer(project: Path) -> None:
    (project / "images" / "base.yml").write_text(
        "from: rolebake/debian:bookworm\nroles: [common]\n"
        "variants:\n  dev: {roles_append: [devtools]}\n")
    (project / "images" / "web.yml").write_text("from: base:dev\nroles: [web]\n")
    plan = plan_build(Project(project), ["web"])
    assert [(x.id, x.parent, x.parent_is_layer) for x in plan.layers] == [
        ("base", "rolebake/debian:bookworm", False),
        ("base:dev", "base", True),
        ("web", "base:dev", True),
    ]


def test_same_tag_in_two_specs_is_refused_whichever_is_built(project: Path) -> None:
    (project / "images" / "a.yml").write_text(
        "from: rolebake/debian:bookworm\nroles: [common]\ntags: ['rolebake/x:1']\n")
    (project / "images" / "b.yml").write_text(
        "from: rolebake/debian:bookworm\nroles: [web]\ntags: ['rolebake/x:1']\n")
    (project / "images" / "c.yml").write_text("from: rolebake/debian:bookworm\nroles: [web]\n")
    for target, other in (("a", "b"), ("b", "a")):
        with pytest.raises(InputError, match=f"is also a tag of {other} "):
            plan_build(Project(project), [target])
    # An image that shares nothing still plans: the clash is a's and b's to fix.
    assert [x.id for x in plan_build(Project(project), ["c"]).layers] == ["c"]


@pytest.mark.parametrize("target", ["x:", ":dev", "x:dev:y", "X", "x\n", "x-", "x:dev-"])
def test_a_bad_target_is_one_line(target: str, project: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "images" / "x.yml").write_text("from: rolebake/debian:bookworm\nroles: [common]\n")
    rc, output = _build(project, target, monkeypatch)
    assert rc == 2, output
    assert len(output.strip().splitlines()) == 1, output
    assert output.startswith(f"error: {target!r} is not an image"), output


def test_a_pipe_as_a_spec_is_refused_without_reading_it(project: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Reading a FIFO would block for ever; it is not a regular file, so it is never opened.
    os.mkfifo(project / "images" / "pipe.yml")
    rc, output = _build(project, "pipe", monkeypatch)
    assert rc == 2, output
    assert output.strip() == "error: images/pipe.yml: a spec must be a regular file"


def test_a_file_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        yamlfile.load_yaml(tmp_path)  # a folder: reading it fails like an unreadable file
    assert str(caught.value).endswith(": cannot read: Is a directory")


def test_a_spec_in_the_library_is_checked_like_the_cli(project: Path) -> None:
    shutil.copy(BY_NAME["var-date"].source, project / "images" / "var-date.yml")
    with pytest.raises(InputError, match="a date cannot be passed on as JSON"):
        load_spec(Project(project), "var-date")


def test_cycle_in_from_names_the_chain(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "images" / "a.yml").write_text("from: b\nroles: [common]\n")
    (project / "images" / "b.yml").write_text("from: c\nroles: [common]\n")
    (project / "images" / "c.yml").write_text("from: a\nroles: [common]\n")
    rc, output = _build(project, "a", monkeypatch)
    assert rc == 2
    assert "`from:` makes a cycle: a -> b -> c -> a" in output
    assert "images/a.yml:1:" in output


def test_unknown_image_suggests_a_name(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "images" / "web.yml").write_text("from: rolebake/debian:bookworm\nroles: [web]\n")
    rc, output = _build(project, "wbe", monkeypatch)
    assert rc == 2
    assert "no image spec 'wbe' (did you mean 'web'?)" in output


def test_unknown_variant(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "images" / "web.yml").write_text(
        "from: rolebake/debian:bookworm\nroles: [web]\n"
        "variants:\n  dev: {roles_append: [devtools]}\n")
    rc, output = _build(project, "web:prod", monkeypatch)
    assert rc == 2
    assert "image 'web' has no variant 'prod'; variants: dev" in output


def test_good_spec_reaches_the_engine_and_exits_4_without_one(project: Path) -> None:
    (project / "images" / "base.yml").write_text(
        "from: rolebake/debian:bookworm\nroles: [common]\n")
    result = run_cli("build", "base", cwd=project, env=NO_ENGINE, timeout=180)
    assert result.rc == 4, result.output
    assert "no container engine answers at unix:///nonexistent/rolebake-test.sock" in result.stderr
    assert "Traceback" not in result.output


# Each provisioner owns its keys --------------------------------------------------------------


def test_no_key_is_known_to_two_owners() -> None:
    from rolebake import provision

    schemas = provision.schemas()
    for variant in (False, True):
        seen: dict[str, str] = {}
        for schema in schemas:
            names = schema.variant_names() if variant else schema.names()
            for key in names:
                # roles_append is each provisioner's own (Ansible roles, Chef roles); a
                # provisioner's key is never the core's, and no two owners share a top key.
                if variant and key == "roles_append" and schema.owner != "core":
                    assert seen.get(key) != "core"
                    continue
                assert key not in seen, f"{key!r} is known to {seen[key]} and {schema.owner}"
                seen[key] = schema.owner


def test_a_hint_about_another_owners_key_names_a_real_key() -> None:
    # chef-solo says where Ansible's `vars:` goes in a chef spec; the hint must follow
    # a rename of the key it is about, not outlive it.
    from rolebake import provision

    schemas = provision.schemas()
    for schema in schemas:
        for key, _ in schema.instead:
            owners = [s.owner for s in schemas if key in s.names() | s.variant_names()]
            assert owners and schema.owner not in owners, (schema.owner, key)


def test_the_spec_keys_page_is_the_schema() -> None:
    # docs/spec-keys.md is generated from the schemas; a key added to a provisioner's
    # schema without regenerating the page fails here.
    result = CliRunner().invoke(main, ["spec-keys", "--markdown"])
    assert result.exit_code == 0, result.output
    page = (REPO / "docs" / "spec-keys.md").read_text(encoding="utf-8")
    assert page == result.output, "run: rolebake spec-keys --markdown > docs/spec-keys.md"


def test_spec_keys_of_one_provisioner() -> None:
    result = CliRunner().invoke(main, ["spec-keys", "chef-solo"])
    assert result.exit_code == 0, result.output
    assert "  chef:" in result.output and "  from:" in result.output
    assert "groups" not in result.output  # Ansible's key is not listed for chef-solo
    bad = CliRunner().invoke(main, ["spec-keys", "puppet"])
    assert bad.exit_code == 2 and "unknown provisioner 'puppet'" in bad.output


# Size caps: a YAML file over the cap is refused from its size, before it is read -------------

def _big_yaml(path: Path, size: int, *, mapping: bool = True, head: str = "big:\n",
              indent: str = "") -> None:
    """A valid YAML file of at least `size` bytes (vars as a mapping, or a list of tasks)."""
    line = "  v{}: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'\n" if mapping else \
        "- {{name: 'task {}', ansible.builtin.debug: {{msg: xxxxxxxxxxxxxxxxxxxxxxxx}}}}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        out.write(head if mapping else "")
        written = index = 0
        while written < size:
            written += out.write(indent + line.format(index))
            index += 1


def test_a_50_mb_spec_is_one_line_and_never_read(project: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # 50 MB of vars, written here (never committed): what took 19 s and 450 MB to refuse.
    spec = project / "images" / "big.yml"
    _big_yaml(spec, 50 * 1024 * 1024, head="from: rolebake/debian:bookworm\nroles: [common]\n"
                                           "vars:\n")
    assert spec.stat().st_size > 50 * 1024 * 1024

    monkeypatch.setattr(yamlfile, "_LineLoader", _Counting)
    monkeypatch.setattr(_Counting, "composed", 0)
    rc, output = _build(project, "big", monkeypatch)
    assert rc == 2, output
    assert output.strip() == ("error: images/big.yml: 50 MB, over the 4 MB cap on YAML files "
                              "rolebake reads (set ROLEBAKE_MAX_YAML_BYTES to raise it)")
    assert _Counting.composed == 0  # refused before the parser saw a node

    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="over the 4 MB cap"):
            yamlfile.load_yaml(spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024  # not a byte of the 50 MB was read


CAP = 64 * 1024  # the cap these tests set through ROLEBAKE_MAX_YAML_BYTES
OVER_CAP = {
    # case: (the spec's body after `from:`, {file: mapping (vars) or a task list}, the file named)
    "playbook": ("playbook: playbooks/big.yml\n", {}, "playbooks/big.yml"),
    "vars_files": ("playbook: playbooks/vf.yml\n", {"playbooks/vars/big.yml": True},
                   "playbooks/vars/big.yml"),
    "group_vars": ("playbook: playbooks/site.yml\n", {"playbooks/group_vars/zz_big.yml": True},
                   "playbooks/group_vars/zz_big.yml"),
    "role vars": ("roles: [bigvars]\n", {"roles/bigvars/vars/main.yml": True},
                  "roles/bigvars/vars/main.yml"),
    "role defaults": ("roles: [bigvars]\n", {"roles/bigvars/defaults/main.yml": True},
                      "roles/bigvars/defaults/main.yml"),
    "include_vars": ("roles: [incvars]\n", {"roles/incvars/vars/big.yml": True},
                     "roles/incvars/vars/big.yml"),
    "task file": ("roles: [bigtasks]\n", {"roles/bigtasks/tasks/main.yml": False},
                  "roles/bigtasks/tasks/main.yml"),
}


@pytest.mark.parametrize("case", sorted(OVER_CAP))
def test_a_yaml_file_over_the_cap_is_one_line(case: str, project: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    body, files, named = OVER_CAP[case]
    _big_yaml(project / "playbooks" / "big.yml", CAP, head="- hosts: all\n  vars:\n", indent="  ")
    (project / "playbooks" / "vf.yml").write_text(
        "- hosts: all\n  vars_files: [vars/big.yml]\n  roles: [common]\n")
    (project / "roles" / "incvars" / "tasks").mkdir(parents=True)
    (project / "roles" / "incvars" / "tasks" / "main.yml").write_text(
        "- ansible.builtin.include_vars: big.yml\n")
    for path, mapping in files.items():
        _big_yaml(project / path, CAP, mapping=mapping)
    (project / "images" / "over.yml").write_text("from: rolebake/debian:bookworm\n" + body)
    monkeypatch.chdir(project)
    result = CliRunner().invoke(main, ["plan", "over"],
                                env={**NO_ENGINE, "ROLEBAKE_MAX_YAML_BYTES": str(CAP)})
    output = result.stderr + result.stdout
    assert result.exit_code == 2, output
    assert output.strip().startswith(f"error: {named}: "), output
    assert output.strip().endswith(" over the 64 KB cap on YAML files rolebake reads (set "
                                   "ROLEBAKE_MAX_YAML_BYTES to raise it)"), output
    assert len(output.strip().splitlines()) == 1, output


def test_files_under_the_cap_plan(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _big_yaml(project / "roles" / "bigvars" / "vars" / "main.yml", CAP // 2)
    (project / "images" / "under.yml").write_text(
        "from: rolebake/debian:bookworm\nroles: [bigvars]\n")
    monkeypatch.setenv("ROLEBAKE_MAX_YAML_BYTES", str(CAP))
    assert [x.id for x in plan_build(Project(project), ["under"]).layers] == ["under"]


def test_a_cap_that_is_not_a_number_is_one_line(project: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "images" / "x.yml").write_text("from: rolebake/debian:bookworm\nroles: [common]\n")
    monkeypatch.setenv("ROLEBAKE_MAX_YAML_BYTES", "4MB")
    rc, output = _build(project, "x", monkeypatch)
    assert rc == 2
    assert output.strip() == "error: ROLEBAKE_MAX_YAML_BYTES='4MB' is not a number of bytes"


# Each file parsed once per command ----------------------------------------------------------

def test_each_file_is_parsed_once_per_command(project: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Two specs on one playbook, a variant, and the role files they share: every file is
    # read by several checks and by each layer, but parsed once.
    (project / "images" / "one.yml").write_text(
        "from: rolebake/debian:bookworm\nplaybook: playbooks/site.yml\n"
        "variants:\n  dev: {roles_append: [devtools]}\n")
    (project / "images" / "two.yml").write_text(
        "from: one\nplaybook: playbooks/site.yml\nvars: {x: 1}\n")
    parsed: list[str] = []
    for name in ("_load_yaml", "_read_ansible_yaml"):
        real = getattr(yamlfile, name)

        def counted(path: Path, real=real) -> object:  # type: ignore[no-untyped-def]
            parsed.append(os.path.relpath(path, project))
            return real(path)

        monkeypatch.setattr(yamlfile, name, counted)
    with yamlfile.parsed_once():  # as the CLI runs a command
        plan = plan_build(Project(project))
        plan_secrets(Project(project), plan)  # every layer's inputs walked again
    assert {"images/one.yml", "images/two.yml", "playbooks/site.yml"} <= set(parsed)
    assert any(p.endswith("web/tasks/main.yml") for p in parsed), parsed
    assert [p for p in set(parsed) if parsed.count(p) > 1] == []


def test_a_file_changed_between_commands_is_read_again(project: Path) -> None:
    spec = project / "images" / "x.yml"
    spec.write_text("from: rolebake/debian:bookworm\nroles: [web]\n")
    assert _roles(project, "x") == ("web",)
    spec.write_text("from: rolebake/debian:bookworm\nroles: [app]\n")  # same size, same second
    assert _roles(project, "x") == ("app",)


def _roles(project: Path, name: str) -> object:
    return getattr(plan_build(Project(project), [name]).layer(name).settings, "roles", None)


# rolebake init writes nothing through a link out of the project -------------------------------

INIT_LINKS = {
    # case: (the link, where it points: out/ is beside the project, the link named)
    "images": ("images", "out", "images"),
    "tests": ("tests", "out", "tests"),
    "tests/images": ("tests/images", "out", "tests/images"),
    "a spec file": ("images/base.yml", "out/base.yml", "images/base.yml"),
    "a suite file, inside": ("tests/images/web/test_web.py", "project/roles/web/README",
                             "tests/images/web/test_web.py"),
    "images, to nothing": ("images", "project/gone", "images"),
}


@pytest.mark.parametrize("case", sorted(INIT_LINKS))
def test_init_refuses_to_write_through_a_link(case: str, project: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    link, target, named = INIT_LINKS[case]
    out = project.parent / "out"
    out.mkdir()
    shutil.rmtree(project / "images")
    (project / link).parent.mkdir(parents=True, exist_ok=True)
    (project / link).symlink_to(project.parent / target)
    before = sorted(project.rglob("*"))
    monkeypatch.chdir(project)
    result = CliRunner().invoke(main, ["init"], env=NO_ENGINE)
    output = result.stderr + result.stdout
    assert result.exit_code == 2, output
    assert len(output.strip().splitlines()) == 1, output  # before any notice
    assert output.startswith(f"error: {named}: is a link "), output
    assert list(out.iterdir()) == [] and sorted(project.rglob("*")) == before


def test_init_writes_through_a_link_inside_the_project(project: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "qa").mkdir()
    (project / "tests").symlink_to("qa")
    shutil.rmtree(project / "images")
    monkeypatch.chdir(project)
    result = CliRunner().invoke(main, ["init"], env=NO_ENGINE)
    assert result.exit_code == 0, result.stderr + result.stdout
    assert (project / "qa" / "images" / "web" / "test_web.py").is_file()
    assert (project / "images" / "web.yml").is_file()


def test_init_writes_no_file_that_appeared_as_a_link(project: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # A link planted after the checks, as the folder is made: the write does not follow it.
    from rolebake.scaffold import init

    shutil.rmtree(project / "images")
    playbook = init.find_playbook(Project(project), None)
    victim = project.parent / "victim"
    victim.write_text("kept\n")
    mkdir = Path.mkdir

    def plant(self: Path, *args: object, **kwargs: object) -> None:
        mkdir(self, *args, **kwargs)  # type: ignore[arg-type]
        if self == project / "images" and not (self / "base.yml").is_symlink():
            (self / "base.yml").symlink_to(victim)

    monkeypatch.setattr(Path, "mkdir", plant)
    with pytest.raises(FileExistsError):
        init.write(Project(project), init.propose(playbook), playbook, None)
    assert victim.read_text() == "kept\n"
