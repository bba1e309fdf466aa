"""The one redaction path (invariant 6): the Redactor, and every writer that goes through it."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from rolebake import redact
from rolebake.cli import main
from rolebake.cli.running import handled
from rolebake.errors import BuildFailed
from rolebake.provision.base import TaskResult, append_log
from rolebake.redact import REDACTED, RedactingStream, Redactor
from rolebake.scaffold import Recording, render, save
from rolebake.verify import TestCase, VerifyResult, write_junit

TRICKY = 'p"a\\s\tw€rd-42'  # a quote, a backslash, a tab, a non-ASCII character
MULTI = "-----BEGIN KEY-----\nMIIEowIBAAKCAQEA\n  indented-line-two\nab\n-----END KEY-----"


@pytest.fixture
def installed() -> Iterator[Redactor]:
    """A Redactor for TRICKY and MULTI, installed as the CLI would; removed after."""
    redactor = Redactor([TRICKY, MULTI])
    redact.install(redactor)
    try:
        yield redactor
    finally:
        redact.install(Redactor())


# The Redactor ---------------------------------------------------------------------------


@pytest.mark.parametrize("serialise", [
    lambda v: json.dumps({"k": v}),
    lambda v: json.dumps({"k": v}, ensure_ascii=False),
    lambda v: yaml.safe_dump({"k": v}),
    lambda v: yaml.safe_dump({"k": v}, allow_unicode=True),
    lambda v: repr({"k": v}),
    lambda v: f"plain: {v}",
], ids=["json", "json-unicode", "yaml", "yaml-unicode", "repr", "plain"])
def test_a_secret_is_caught_in_each_escaped_form(serialise: Any) -> None:
    text = serialise(TRICKY)
    assert TRICKY not in text or serialise is not None  # the form under test may escape it
    hidden = Redactor([TRICKY]).text(text)
    assert REDACTED in hidden
    for form in ("p\"a", "w€rd-42", "w\\u20acrd", "w\\u20ACrd", "rd-42"):
        assert form not in hidden, hidden


def test_data_is_redacted_before_it_is_serialised() -> None:
    data = {"error": {"details": f"oops {TRICKY}", TRICKY: [1, f"x{TRICKY}y", None]}}
    out = json.dumps(Redactor([TRICKY]).data(data))
    assert json.loads(out) == {"error": {"details": f"oops {REDACTED}",
                                         REDACTED: [1, f"x{REDACTED}y", None]}}


def test_a_multi_line_secret_is_redacted_line_by_line() -> None:
    # Ansible's YAML log prints a multi-line value as a block, each line indented.
    log = "ok: [host] =>\n  msg: |-\n" + "".join(f"    {line}\n" for line in MULTI.splitlines())
    hidden = Redactor([MULTI]).text(log)
    for line in MULTI.splitlines():
        if len(line.strip()) >= redact.MIN_LENGTH:
            assert line.strip() not in hidden, hidden
    assert "    ab\n" in hidden  # two characters are no secret: they would match anywhere
    assert Redactor([MULTI]).text(MULTI) == REDACTED  # whole, it is one span


@pytest.mark.parametrize("prefix", ["", "x", "msg: |-\n    ", "a longer prefix: "])
def test_a_tab_matches_the_spaces_ansible_expands_it_to(prefix: str) -> None:
    # Ansible's YAML callback writes a block scalar with str.expandtabs(): the
    # tab becomes as many spaces as reach the next multiple of 8.
    text = (prefix + TRICKY + " and more\n").expandtabs()
    assert "\t" not in text
    hidden = Redactor([TRICKY]).text(text)
    assert "w€rd" not in hidden and "p\"a" not in hidden, hidden
    assert hidden.endswith(f"{REDACTED} and more\n")


def test_overlapping_secrets_leave_no_part_of_either() -> None:
    redactor = Redactor(["abcdef", "defghi", "cdefgh"])
    assert redactor.text("xx abcdefghi yy") == f"xx {REDACTED} yy"
    assert redactor.text("abcdef-defghi") == f"{REDACTED}-{REDACTED}"


def test_a_secret_inside_another_is_one_span() -> None:
    redactor = Redactor(["token-1234", "1234"])
    assert redactor.text("a token-12345 b 1234") == f"a {REDACTED}5 b {REDACTED}"


def test_short_values_are_not_redacted() -> None:
    redactor = Redactor(["abc", "", " ab "])
    assert not redactor
    assert redactor.text("abc ab") == "abc ab"
    assert Redactor(["abcd"]).text("xabcdx") == f"x{REDACTED}x"


def test_nothing_installed_hides_nothing() -> None:
    assert redact.text(TRICKY) == TRICKY
    assert redact.data({"k": TRICKY}) == {"k": TRICKY}


# Writers that go through the installed Redactor -------------------------------------------


def test_redacting_stream_hides_secrets_and_offers_no_way_around(installed: Redactor) -> None:
    inner = io.StringIO()
    stream = RedactingStream(inner)
    stream.write(f"password is {TRICKY}\n")
    click.echo(f"json: {json.dumps(TRICKY)}", file=stream)
    # Bytes go through its buffer (click writes bytes there), redacted just the same,
    # a character split over two writes kept whole.
    click.echo(f"bytes: {TRICKY}".encode(), file=stream)
    raw = f"split: {TRICKY}\n".encode()
    cut = raw.index("€".encode()) + 1
    stream.buffer.write(raw[:cut])
    stream.buffer.write(raw[cut:])
    assert TRICKY not in inner.getvalue() and "w\\u20acrd" not in inner.getvalue()
    assert inner.getvalue().count(REDACTED) == 4, inner.getvalue()
    assert "\ufffd" not in inner.getvalue()


def test_ansible_display_takes_the_redacting_stream_as_it_is(tmp_path: Path) -> None:
    # Ansible's Display, made when rolebake decrypts a vaulted file in-process, patches
    # stdout's buffer for fork-safety and reconfigures its error handler; it warns when
    # it cannot. A process of its own: Display is made once per process.
    script = (
        "import sys\n"
        "from rolebake import redact\n"
        "sys.stdout = redact.RedactingStream(sys.stdout)\n"
        "sys.stderr = redact.RedactingStream(sys.stderr)\n"
        "redact.install(redact.Redactor(['s3cret-value']))\n"
        "from ansible.utils.display import Display\n"
        "Display().display('shown: s3cret-value')\n"
        "Display().warning('warned: s3cret-value')\n"
    )
    env = {**os.environ, "ANSIBLE_LOCAL_TEMP": str(tmp_path), "ANSIBLE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "failed to patch" not in done.stderr and "failed to reconfigure" not in done.stderr
    assert f"shown: {REDACTED}" in done.stdout
    assert f"warned: {REDACTED}" in done.stderr
    assert "s3cret-value" not in done.stdout + done.stderr


def test_the_log_is_redacted_and_private(installed: Redactor, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "web.log"
    append_log(log, "provision", f"TASK [x]\n  msg: {TRICKY}\n" + MULTI)
    text = log.read_text(encoding="utf-8")
    assert TRICKY not in text and "MIIEowIBAAKCAQEA" not in text and REDACTED in text
    assert log.stat().st_mode & 0o777 == 0o600
    assert log.parent.stat().st_mode & 0o777 == 0o700


def test_junit_is_redacted_before_it_is_escaped(installed: Redactor, tmp_path: Path) -> None:
    case = TestCase(suite="t", name=f"test_{TRICKY}", outcome="failed",
                    message=f"assert {TRICKY!r} == 'x'\n{MULTI}")
    path = tmp_path / "junit.xml"
    write_junit({"web": VerifyResult(image_id="sha256:1", cases=(case,))}, path)
    raw = path.read_text(encoding="utf-8")
    texts = [t for e in ET.parse(path).getroot().iter() for t in [e.text or "",
                                                                 *e.attrib.values()]]
    for blob in (raw, "\n".join(texts)):
        assert "w€rd" not in blob and "MIIEowIBAAKCAQEA" not in blob, blob
    assert REDACTED in raw


def test_scaffold_records_and_tests_hold_no_secret(installed: Redactor, tmp_path: Path) -> None:
    task = TaskResult(name="Write the token", role="web", action="ansible.builtin.copy",
                      status="changed", args={"dest": "/etc/token", "content": TRICKY,
                                              "mode": "0600"},
                      result={"dest": "/etc/token", "mode": "0600", "owner": "root"})
    recording = Recording(image="web", provisioner="ansible", tasks=(task,))
    kept = tmp_path / "state" / "scaffold" / "web.json"
    save(recording, kept)
    assert kept.stat().st_mode & 0o777 == 0o600
    text = kept.read_text(encoding="utf-8")
    assert "w€rd" not in text and "w\\u20acrd" not in text and REDACTED in text
    source = render(Recording.from_dict(json.loads(text)))
    assert "w€rd" not in source and "/etc/token" in source


# The CLI: every line it prints, tracebacks included ---------------------------------------------


@pytest.fixture
def leaking_command() -> Iterator[dict[str, Any]]:
    """`rolebake leak-for-test`: installs a Redactor for TRICKY and MULTI, then does what
    the test puts in the box (print JSON, raise)."""
    box: dict[str, Any] = {}

    @click.command("leak-for-test")
    @click.pass_context
    @handled
    def command(ctx: click.Context) -> None:
        del ctx
        redact.install(Redactor([TRICKY, MULTI]))
        box["action"]()

    main.add_command(command)
    try:
        yield box
    finally:
        main.commands.pop("leak-for-test", None)


def _assert_hidden(text: str) -> None:
    for form in ("w€rd", "w\\u20acrd", "w\\u20ACrd", "MIIEowIBAAKCAQEA", "indented-line-two"):
        assert form not in text, text


def test_cli_error_details_are_redacted(leaking_command: dict[str, Any]) -> None:
    def fail() -> None:
        raise BuildFailed(f"task 'x' failed: {TRICKY}", details=MULTI, hint=repr(TRICKY))

    leaking_command["action"] = fail
    result = CliRunner().invoke(main, ["leak-for-test"])
    assert result.exit_code == 1
    _assert_hidden(result.stderr)
    assert result.stderr.startswith(f"error: task 'x' failed: {REDACTED}")


@pytest.mark.parametrize("debug", [[], ["--debug"]], ids=["plain", "debug"])
def test_cli_internal_errors_and_tracebacks_are_redacted(
        leaking_command: dict[str, Any], debug: list[str]) -> None:
    def crash() -> None:
        raise KeyError(f"{TRICKY}\n{MULTI}")

    leaking_command["action"] = crash
    result = CliRunner().invoke(main, [*debug, "leak-for-test"])
    assert result.exit_code == 1
    assert "internal error: KeyError" in result.stderr
    assert ("Traceback (most recent call last)" in result.stderr) == bool(debug)
    _assert_hidden(result.stderr)


def test_cli_json_is_redacted_before_serialising(leaking_command: dict[str, Any]) -> None:
    from rolebake.cli.running import echo_json

    leaking_command["action"] = lambda: echo_json({"error": {"details": TRICKY}})
    result = CliRunner().invoke(main, ["leak-for-test"])
    assert result.exit_code == 0, result.output
    _assert_hidden(result.stdout)
    assert json.loads(result.stdout) == {"error": {"details": REDACTED}}


def test_cli_removes_its_redactor_and_streams_after_the_command(
        leaking_command: dict[str, Any]) -> None:
    leaking_command["action"] = lambda: click.echo(TRICKY)
    stdout = sys.stdout
    result = CliRunner().invoke(main, ["leak-for-test"])
    assert result.stdout == REDACTED + "\n"
    assert sys.stdout is stdout
    assert redact.text(TRICKY) == TRICKY


def test_parity_output_progress_and_logs_are_redacted(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`rolebake parity` loads the spec's secrets like a build, hands them on, and every
    output (table, progress, the VM's Ansible log) hides them."""
    from rolebake.engine import DockerEngine
    from rolebake.events import LogEvent
    from rolebake.parity import run as parity_run
    from rolebake.parity.diff import Category, ParityItem, ParityReport, Status

    root = tmp_path / "project"
    (root / "images").mkdir(parents=True)
    (root / "roles" / "web" / "tasks").mkdir(parents=True)
    (root / "roles" / "web" / "tasks" / "main.yml").write_text("- debug: msg=hi\n")
    (root / "images" / "web.yml").write_text(
        "from: rolebake/debian:bookworm\nroles: [web]\n"
        f"vars: {{token: {json.dumps(TRICKY)}}}\nsensitive_vars: [token]\n", encoding="utf-8")
    seen: dict[str, Any] = {}

    def fake_parity(engine: Any, project: Any, image: str, vm: str, *, events: Any,
                    secrets: Any, strict_ids: bool = False,
                    accept_recommends: bool = False) -> Any:
        seen["secrets"] = secrets
        events(LogEvent("web", f"applying {TRICKY} to the VM"))
        append_log(project.private_dir("logs") / "parity-web.log", "provision", TRICKY)
        item = ParityItem(Category.PATH, f"/etc/{TRICKY}", TRICKY, "other", Status.DIFFERENT,
                          f"content differs: {TRICKY!r}")
        return parity_run.ParityResult(image=image, image_id="sha256:" + "0" * 64, vm=vm,
                                       report=ParityReport(items=(item,)),
                                       container_tests=[], vm_tests=[])

    monkeypatch.setattr(parity_run, "run_parity", fake_parity)
    monkeypatch.setattr(DockerEngine, "connect", classmethod(lambda cls: None))
    page = tmp_path / "parity.html"
    for args in ([], ["--json"], ["--html", str(page)]):
        result = CliRunner().invoke(main, ["--project", str(root), "parity", "web", "--vm",
                                           "ssh://root@vm.example:22", *args])
        assert result.exit_code == 5, result.output
        _assert_hidden(result.stdout + result.stderr)
        assert REDACTED in result.stdout and REDACTED in result.stderr
    # The page: redacted before it is escaped, so no escaped form of the secret is left.
    _assert_hidden(page.read_text(encoding="utf-8"))
    assert REDACTED in page.read_text(encoding="utf-8")
    assert TRICKY in seen["secrets"].values()
    log = root / ".rolebake" / "logs" / "parity-web.log"
    assert "w€rd" not in log.read_text(encoding="utf-8")


# Encoded forms (issue 18: "Secrets, every form") -----------------------------------------------


SECRET = "db-pass: hunter2/Xy+z?&=ok"  # `/`, `+`, `?`, `&`, `=`: every encoding differs


def _b64(data: bytes, urlsafe: bool, pad: bool) -> str:
    text = (base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)).decode()
    return text if pad else text.rstrip("=")


@pytest.mark.parametrize("urlsafe", [False, True], ids=["standard", "url-safe"])
@pytest.mark.parametrize("pad", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("value", [SECRET, "abcd", "abcde", "abcdef", TRICKY])
def test_a_whole_value_is_caught_in_base64(value: str, urlsafe: bool, pad: bool) -> None:
    encoded = _b64(value.encode(), urlsafe, pad)
    hidden = Redactor([value]).text(f"msg: {encoded}\n")
    assert hidden == f"msg: {REDACTED}\n", (encoded, hidden)


@pytest.mark.parametrize("urlsafe", [False, True], ids=["standard", "url-safe"])
@pytest.mark.parametrize("before", [b"", b"x", b"xy", b"xyz", b"#!/bin/sh\nexport TOKEN="])
@pytest.mark.parametrize("after", [b"", b"\n", b"\nmore text after it\n"])
def test_a_value_inside_a_longer_base64_stream_is_caught_at_any_offset(
        before: bytes, after: bytes, urlsafe: bool) -> None:
    stream = _b64(before + SECRET.encode() + after, urlsafe, pad=True)
    hidden = Redactor([SECRET]).text(stream)
    assert REDACTED in hidden
    # What is left are the characters that also encode the bytes around it: at most a
    # group's worth on each side of the secret, never a run that decodes to part of it.
    left = hidden.replace(REDACTED, " ").split()
    assert sum(len(part) for part in left) <= len(stream) - len(SECRET) * 4 // 3 + 4, hidden


@pytest.mark.parametrize("form", [
    SECRET.encode().hex(),
    SECRET.encode().hex().upper(),
    urllib.parse.quote(SECRET, safe=""),
    urllib.parse.quote_plus(SECRET),
    urllib.parse.quote(SECRET),
    json.dumps(SECRET)[1:-1],
    json.dumps(TRICKY)[1:-1],
], ids=["hex", "HEX", "url", "url-plus", "url-path", "json", "json-tricky"])
def test_hex_url_and_json_forms_are_caught(form: str) -> None:
    redactor = Redactor([SECRET, TRICKY])
    assert redactor.text(f"[{form}]") == f"[{REDACTED}]"


def test_value_forms_hold_every_whole_form() -> None:
    forms = set(redact.value_forms(SECRET))
    assert {SECRET, base64.b64encode(SECRET.encode()).decode(),
            base64.urlsafe_b64encode(SECRET.encode()).decode().rstrip("="),
            SECRET.encode().hex(), SECRET.encode().hex().upper(),
            urllib.parse.quote(SECRET, safe=""), json.dumps(SECRET)[1:-1]} <= forms
    assert all(len(form) >= redact.MIN_LENGTH for form in forms)


def test_the_scan_leaves_out_encodings_short_enough_to_match_by_chance() -> None:
    forms = redact.value_forms("abcd")  # 8 hex characters: a checksum could hold them
    assert "abcd" in forms and "61626364" not in forms
    assert "61626364" in Redactor(["abcd"]).needles  # output still hides it


# Registered as soon as parsed -----------------------------------------------------------------


def test_registered_values_stay_hidden_whatever_is_installed_later() -> None:
    try:
        redact.register([SECRET])
        assert redact.text(SECRET) == REDACTED
        redact.install(Redactor([TRICKY]))  # the CLI's, built later from the SecretSet
        assert redact.text(f"{SECRET} {TRICKY}") == f"{REDACTED} {REDACTED}"
    finally:
        redact.reset()
    assert redact.text(SECRET) == SECRET


@pytest.mark.parametrize("value", [
    "2024-01-01",  # a date: not JSON
    "{4711: 'x'}",  # a key that is not text: the message used to quote it
    "[.inf]",
    "!!binary aGVsbG8=",
])
def test_a_bad_sensitive_var_names_the_key_never_the_value(tmp_path: Path, value: str) -> None:
    root = tmp_path / "project"
    (root / "images").mkdir(parents=True)
    (root / "roles" / "common" / "tasks").mkdir(parents=True)
    (root / "roles" / "common" / "tasks" / "main.yml").write_text("- debug: msg=hi\n")
    (root / "images" / "base.yml").write_text(
        "from: rolebake/debian:bookworm\nroles: [common]\n"
        f"vars:\n  db_password: {value}\nsensitive_vars: [db_password]\n")
    result = CliRunner().invoke(main, ["--project", str(root), "plan", "base"],
                                env={"DOCKER_HOST": "unix:///nonexistent/rolebake-test.sock"})
    output = result.stderr + result.stdout
    assert result.exit_code == 2, output
    assert "images/base.yml:4: vars.db_password: a sensitive var can hold only" in output
    for part in ("4711", "2024", "inf", "aGVsbG8", "hello"):
        assert part not in output, output


def test_a_sensitive_value_is_hidden_in_any_later_parse_error(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "images").mkdir(parents=True)
    # The bad tag comes after the value is read: the error quotes the tag, which
    # holds the value.
    (root / "images" / "base.yml").write_text(
        "from: rolebake/debian:bookworm\nroles: [common]\n"
        "vars: {api_token: zq9-TOPSECRET}\nsensitive_vars: [api_token]\n"
        "tags: ['Bad:zq9-TOPSECRET']\n")
    result = CliRunner().invoke(main, ["--project", str(root), "plan", "base"],
                                env={"DOCKER_HOST": "unix:///nonexistent/rolebake-test.sock"})
    output = result.stderr + result.stdout
    assert result.exit_code == 2, output
    assert "zq9-TOPSECRET" not in output and REDACTED in output, output


# The layer scan looks for every form; a failed scan keeps no image ------------------------------


def _saved_image(files: dict[str, bytes]) -> bytes:
    """A `docker save` archive with one layer holding `files`."""
    def tar_of(members: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()
    manifest = json.dumps([{"Config": "config.json", "Layers": ["layer/layer.tar"]}]).encode()
    return tar_of({"manifest.json": manifest, "config.json": b"{}",
                   "layer/layer.tar": tar_of(files)})


@pytest.mark.parametrize("encode", [
    lambda s: s,
    base64.b64encode,
    lambda s: base64.b64encode(b"prefix-" + s + b"\n"),
    lambda s: base64.b64encode(b"pr" + s).rstrip(b"="),
    lambda s: base64.urlsafe_b64encode(b"p" + s + b"suffix"),
    lambda s: s.hex().encode(),
    lambda s: s.hex().upper().encode(),
    lambda s: urllib.parse.quote(s, safe="").encode(),
    lambda s: json.dumps(s.decode()).encode(),
], ids=["plain", "b64", "b64-embedded", "b64-offset2-nopad", "b64url-offset1", "hex", "HEX",
        "url", "json"])
def test_the_scan_finds_every_form_in_the_layer(encode: Any, tmp_path: Path) -> None:
    from rolebake.secrets import SecretSet, _scan_saved_image

    secrets = SecretSet()
    secrets.add_values([SECRET])
    try:
        archive = _saved_image({"etc/app.conf": b"token = " + encode(SECRET.encode()) + b"\n",
                                "etc/harmless": b"nothing here\n"})
        needles = sorted({f.encode() for v in secrets.values() for f in redact.value_forms(v)})
        assert _scan_saved_image(io.BytesIO(archive), needles) == ["/etc/app.conf"]
    finally:
        redact.reset()


def test_keep_failed_never_keeps_an_image_that_failed_the_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rolebake import provision
    from rolebake.builder import Builder, BuildOptions
    from rolebake.load import plan_build
    from rolebake.secrets import SecretSet
    from tests.unit.fakes import FAKE_PROVISIONER, FakeEngine, FakeProvisioner, ProvisionerControl
    from tests.unit.test_builder import BASE, BASE_IMAGE, Recorder, make_project

    monkeypatch.setitem(provision.PROVISIONERS, "fake", FAKE_PROVISIONER)
    monkeypatch.setattr(FakeProvisioner, "control", ProvisionerControl())
    project = make_project(tmp_path / "project", base=BASE)
    engine = FakeEngine()
    engine.add_image(BASE_IMAGE, config={"Cmd": ["bash"]})
    archive = _saved_image({"etc/copy": base64.b64encode(SECRET.encode())})
    monkeypatch.setattr(engine, "save", lambda image_id: iter([archive]))
    secrets = SecretSet()
    secrets.add_values([SECRET])
    recorder = Recorder()
    try:
        report = Builder(engine, project, recorder, BuildOptions(
            keep_failed=True, secrets=secrets)).build(plan_build(project, ["base"]))
    finally:
        redact.reset()
    base = report.results["base"]
    assert base.error is not None and "a build secret was found in the image" in \
        base.error.message
    assert "/etc/copy" in base.error.message
    assert "removed despite --keep-failed" in base.error.message
    assert base.failed_tag is None
    assert engine.image_ids() == {engine.tagged(BASE_IMAGE)}
    said = [getattr(e, "message", "") for e in recorder.events]
    assert any("removed, not kept: it failed the secret scan" in m for m in said), said
