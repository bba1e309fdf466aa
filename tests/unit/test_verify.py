"""Metadata checks and JUnit reading/writing (no engine)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rolebake.image import commit_config
from rolebake.spec import HealthCheck, ImageConfig
from rolebake.verify import (
    TestCase,
    VerifyResult,
    check_metadata,
    parse_junit,
    spec_expectations,
    write_junit,
)

PARENT = {
    "Cmd": ["bash"],
    "Env": ["PATH=/usr/bin:/bin"],
    "Labels": {"rolebake.cache-key": "sha256:parent", "org.example.team": "ops"},
}
SPEC = ImageConfig(cmd=("nginx", "-g", "daemon off;"), env={"LANG": "C.UTF-8"},
                   expose=("8080/tcp",), user="www-data", workdir="/srv",
                   volumes=("/data",), labels={"org.opencontainers.image.title": "web"},
                   healthcheck=HealthCheck(test=("CMD", "true")))
EXPECTED = commit_config(PARENT, SPEC, {"rolebake.spec": "web"})


def outcomes(cases: list[TestCase]) -> dict[str, str]:
    return {c.name: c.outcome for c in cases}


def failures(cases: list[TestCase]) -> dict[str, str]:
    return {c.name: c.message for c in cases if c.outcome == "failed"}


def test_image_as_committed_passes_every_check() -> None:
    cases = check_metadata(EXPECTED, dict(EXPECTED))
    assert set(outcomes(cases)) == {"Cmd", "Entrypoint", "User", "WorkingDir", "Env",
                                    "ExposedPorts", "Volumes", "Labels", "Healthcheck"}
    assert set(outcomes(cases).values()) == {"passed"}
    assert all(c.suite == "metadata" for c in cases)


def test_engine_additions_are_tolerated() -> None:
    # The daemon merges the build container's env and labels into the commit;
    # extra entries are not a mismatch, missing or different ones are.
    actual = dict(EXPECTED, Env=[*EXPECTED["Env"], "HOSTNAME=abc"],
                  Labels={**EXPECTED["Labels"], "extra": "1"},
                  Cmd=None if not EXPECTED["Cmd"] else EXPECTED["Cmd"])
    assert not failures(check_metadata(EXPECTED, actual))


def test_empty_and_missing_cmd_are_the_same() -> None:
    expected = dict(EXPECTED, Cmd=[], Entrypoint=[])
    assert not failures(check_metadata(expected, dict(expected, Cmd=None, Entrypoint=None)))


@pytest.mark.parametrize(("key", "value", "message"), [
    ("Cmd", ["bash"], "Cmd: expected ['nginx', '-g', 'daemon off;'], image has ['bash']"),
    ("Entrypoint", ["sleep", "infinity"], "Entrypoint: expected [], image has ['sleep'"),
    ("User", "", "User: expected 'www-data', image has ''"),
    ("WorkingDir", "/", "WorkingDir: expected '/srv', image has '/'"),
    ("Env", ["PATH=/usr/bin:/bin", "LANG=en_US.UTF-8"], "Env: missing ['LANG=C.UTF-8']"),
    ("ExposedPorts", {"8080/tcp": {}, "22/tcp": {}},
     "ExposedPorts: expected ['8080/tcp'], image has ['22/tcp', '8080/tcp']"),
    ("Volumes", None, "Volumes: expected ['/data'], image has []"),
    ("Labels", {"org.opencontainers.image.title": "app"},
     "Labels: differing labels: ['org.example.team', 'org.opencontainers.image.title',"),
    ("Healthcheck", {"Test": ["CMD", "false"]},
     "Healthcheck: expected ['CMD', 'true'], image has ['CMD', 'false']"),
])
def test_each_mismatch_is_named(key: str, value: object, message: str) -> None:
    actual = dict(EXPECTED)
    actual[key] = value
    found = failures(check_metadata(EXPECTED, actual))
    assert list(found) == [key]
    assert found[key].startswith(message)


def test_spec_expectations_leave_build_provenance_out() -> None:
    expected = spec_expectations(PARENT, SPEC)
    assert expected["Labels"] == {"org.opencontainers.image.title": "web"}
    assert expected["Cmd"] == ["nginx", "-g", "daemon off;"]
    assert "PATH=/usr/bin:/bin" in expected["Env"] and "LANG=C.UTF-8" in expected["Env"]
    # An image built from this spec passes, whatever build stamped its labels.
    built = commit_config(PARENT, SPEC, {"rolebake.build-id": "abc",
                                         "org.opencontainers.image.created": "now"})
    assert not failures(check_metadata(expected, built))
    # ...and one whose spec changed since does not.
    changed = spec_expectations(PARENT, ImageConfig(cmd=SPEC.cmd, user="root"))
    assert "User" in failures(check_metadata(changed, built))


PYTEST_JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5" time="1.2">
<testcase classname="tests.images.web.test_web" name="test_pkg[docker://abc123-nginx]" time="0.5"/>
<testcase classname="tests.images.web.test_web" name="test_conf[docker://abc123]" time="0.25">
<failure message="AssertionError: assert 420 == 384&#10; +  where 420 = &lt;file&gt;.mode">host = x
    def test_conf(host):
&gt;       assert host.file("/etc/x").mode == 0o600
E       assert 420 == 384</failure></testcase>
<testcase classname="tests.images.web.test_web" name="test_later[docker://abc123]" time="0">
<skipped type="pytest.skip" message="not yet">skipped</skipped></testcase>
<testcase classname="tests.images.web.test_web" name="test_fixture[docker://abc123]" time="0">
<error message="failed on setup with &quot;boom&quot;">E boom</error></testcase>
<testcase classname="tests.images.web.test_web" name="test_ids" time="0.1"/>
</testsuite></testsuites>
"""


def test_parse_junit_reads_outcomes_and_drops_the_host(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    path.write_text(PYTEST_JUNIT)
    cases = parse_junit(path, "docker://abc123")
    assert [(c.name, c.outcome) for c in cases] == [
        ("test_pkg[nginx]", "passed"), ("test_conf", "failed"), ("test_later", "skipped"),
        ("test_fixture", "error"), ("test_ids", "passed")]
    conf = cases[1]
    assert conf.message.splitlines()[0] == "AssertionError: assert 420 == 384"  # first
    assert "E       assert 420 == 384" in conf.message
    assert conf.seconds == 0.25 and conf.suite == "tests.images.web.test_web"
    assert parse_junit(path)[0].name == "test_pkg[docker://abc123-nginx]"


def test_long_tracebacks_keep_the_assertion(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    path.write_text(PYTEST_JUNIT.replace("host = x", "host = x\n" + "frame\n" * 800))
    message = parse_junit(path, "docker://abc123")[1].message
    assert len(message) <= 1510
    assert message.startswith("AssertionError: assert 420 == 384")
    assert message.endswith("E       assert 420 == 384")


def test_write_junit_round_trip_lists_every_case(tmp_path: Path) -> None:
    source = tmp_path / "pytest.xml"
    source.write_text(PYTEST_JUNIT)
    suite_cases = parse_junit(source, "docker://abc123")
    metadata = check_metadata(EXPECTED, dict(EXPECTED, User="root"))
    results = {
        "web": VerifyResult(image_id="sha256:1", cases=tuple(metadata + suite_cases)),
        "base": VerifyResult(image_id="sha256:2", cases=(TestCase("metadata", "Cmd", "passed"),)),
    }
    out = tmp_path / "reports" / "junit.xml"
    write_junit(results, out)

    root = ET.parse(out).getroot()  # parses as XML
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"web", "base"}
    web = suites["web"]
    names = [c.get("name") for c in web.findall("testcase")]
    assert names == [c.name for c in results["web"].cases]
    assert web.get("tests") == str(len(names))
    assert (web.get("failures"), web.get("errors"), web.get("skipped")) == ("2", "1", "1")
    user = web.find("testcase[@name='User']")
    assert user is not None and user.get("classname") == "web.metadata"
    failure = user.find("failure")
    assert failure is not None
    assert failure.get("message") == "User: expected 'www-data', image has 'root'"
    conf = web.find("testcase[@name='test_conf']/failure")
    assert conf is not None and conf.get("message") == "AssertionError: assert 420 == 384"
    assert web.find("testcase[@name='test_fixture']/error") is not None
    assert web.find("testcase[@name='test_later']/skipped") is not None

    # And back: every case survives, with its outcome.
    again = parse_junit(out)
    assert [(c.name, c.outcome) for c in again] == [
        (c.name, c.outcome) for r in results.values() for c in r.cases]
