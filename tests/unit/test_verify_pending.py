"""Verification's pytest started before its container exists: the pending host, told later.

The suites run for real, through the pytest subprocess verification uses; the
container id travels on the pipe, and the backend is asked for its name, which
needs no engine.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from rolebake import verify, verify_session

SUITE = '''\
def test_told(host):
    host.backend._resolve()
    assert host.backend.name == "c0ffee"
'''


def _suite(tmp_path: Path, text: str) -> Path:
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_pending.py").write_text(text, encoding="utf-8")
    return tests


def test_verify_and_the_plugin_name_the_same_pipe() -> None:
    assert (verify.HOST_FD_ENV, verify.PENDING) == (verify_session.HOST_FD_ENV,
                                                    verify_session.PENDING)


def test_the_pending_host_becomes_the_container_sent_later(tmp_path: Path) -> None:
    tests = _suite(tmp_path, SUITE)
    with verify._Suite(tests, verify.session_url(verify.PENDING), tmp_path,
                       verify.SESSION_ARGS) as suite:
        time.sleep(0.2)  # the container being made: pytest waits for its id
        cases = suite.results("c0ffee")
    assert [(c.name, c.outcome) for c in cases] == [("test_told", "passed")], cases
    # the pending host is not part of the test's name in the report
    assert "pending" not in cases[0].name


def test_a_suite_left_before_its_container_was_ready_is_stopped(tmp_path: Path) -> None:
    tests = _suite(tmp_path, SUITE)
    suite = verify._Suite(tests, verify.session_url(verify.PENDING), tmp_path,
                          verify.SESSION_ARGS)
    with pytest.raises(RuntimeError, match="not ready"), suite:
        raise RuntimeError("not ready")  # what wait_ready raises, as TestsFailed
    assert suite.proc.returncode is not None  # ended, not left running
    assert not suite.junit.parent.exists()


def test_a_closed_pipe_is_no_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)
    monkeypatch.setenv(verify_session.HOST_FD_ENV, str(read_end))
    monkeypatch.setattr(verify_session, "_pending", {})
    try:
        with pytest.raises(RuntimeError, match="called off"):
            verify_session.pending_container()
    finally:
        os.close(read_end)


def test_the_id_is_read_once_for_every_host_object(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"abc123\n")
    os.close(write_end)
    monkeypatch.setenv(verify_session.HOST_FD_ENV, str(read_end))
    monkeypatch.setattr(verify_session, "_pending", {})
    try:
        assert verify_session.pending_container() == "abc123"
        assert verify_session.pending_container() == "abc123"  # the pipe is empty now
    finally:
        os.close(read_end)
