"""What listens in a container, and the ready check's error when a port never opens."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from rolebake import verify
from rolebake.engine import ContainerHandle, ExecResult
from rolebake.errors import EngineUnavailable, TestsFailed
from rolebake.listeners import Listener, merge_owners, owners_to_ask, parse_listeners
from rolebake.spec import ReadyCheck
from rolebake.verify import wait_ready

RECORDED = (Path(__file__).parent / "fixtures" / "listeners" / "loopback.txt").read_text()

# A tcp6 table: [::1]:6379 and [::]:80 listening, one established connection.
TCP6 = """\
  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:18EB 00000000000000000000000000000000:0000 0A \
00000000:00000000 00:00000000 00000000   101        0 4242 1 0 100 0 0 10 0
   1: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A \
00000000:00000000 00:00000000 00000000     0        0 4243 1 0 100 0 0 10 0
   2: 00000000000000000000000001000000:18EB 00000000000000000000000001000000:9C40 01 \
00000000:00000000 00:00000000 00000000   101        0 4244 1 0 100 0 0 10 0
@@sockets
12 4242 redis-server
"""


def test_recorded_container_with_a_loopback_and_an_open_listener() -> None:
    found = {(item.address, item.port): item for item in parse_listeners(RECORDED)}
    assert set(found) == {("127.0.0.1", 8000), ("0.0.0.0", 9000)}
    assert found["127.0.0.1", 8000].loopback_only
    assert not found["0.0.0.0", 9000].loopback_only
    assert found["127.0.0.1", 8000].describe() == "perl (pid 8) listens on 127.0.0.1:8000"


def test_ipv6_listeners_only_listening_sockets() -> None:
    found = parse_listeners(TCP6)
    assert [(i.address, i.port, i.pid, i.program) for i in found] == [
        ("::1", 6379, 12, "redis-server"), ("::", 80, None, "")]
    assert found[0].loopback_only and not found[1].loopback_only
    assert found[0].describe() == "redis-server (pid 12) listens on [::1]:6379"
    assert found[1].describe() == "a process listens on [::]:80"
    assert Listener("::ffff:127.0.0.1", 1).loopback_only


def test_garbage_is_skipped() -> None:
    assert parse_listeners("no tables here\n 0: zz:zz 0 0A 0 0 0 0 0 1\n@@sockets\nx y\n") == []


class _Engine:
    """A container that runs, never answers on its port, and shows `listeners` inside."""

    def __init__(self, listeners: str | None) -> None:
        self.listeners = listeners

    def container_state(self, container: ContainerHandle) -> dict[str, Any]:
        return {"Running": True}

    def container_ip(self, container: ContainerHandle) -> str | None:
        return None  # no address reached from outside: the port never opens

    def exec(self, container: ContainerHandle, argv: list[str], **_: Any) -> ExecResult:
        if self.listeners is None:
            raise EngineUnavailable("container is gone")
        return ExecResult(rc=0, output=self.listeners)

    def logs(self, container: ContainerHandle) -> str:
        return "serving on 127.0.0.1:8000"


def _fail(listeners: str | None, port: int) -> TestsFailed:
    with pytest.raises(TestsFailed) as caught:
        wait_ready(_Engine(listeners), ContainerHandle("c1", "verify"),  # type: ignore[arg-type]
                   ReadyCheck(port=port, timeout_s=0))
    return caught.value


def test_a_port_bound_to_loopback_is_named_with_what_to_change() -> None:
    error = _fail(RECORDED, 8000)
    assert error.message == (
        "the container was not ready within 0 s: port 8000 never opened from outside the "
        "container, but inside it perl (pid 8) listens on 127.0.0.1:8000: a loopback address "
        "only the container itself reaches")
    assert "role variable for its listen or bind address" in error.hint
    assert "ready: {command: [bash, -c, '</dev/tcp/127.0.0.1/8000']}" in error.hint
    assert error.details == "serving on 127.0.0.1:8000"


def test_a_port_nothing_listens_on_says_what_does_listen() -> None:
    error = _fail(RECORDED, 8080)
    assert error.message.endswith(
        "port 8080 never opened from outside the container; nothing in it listens on port "
        "8080 (it listens on 0.0.0.0:9000, 127.0.0.1:8000)")
    assert not error.hint


def test_no_look_inside_keeps_the_plain_message() -> None:
    assert _fail(None, 8000).message == (
        "the container was not ready within 0 s: port 8000 never opened from outside the "
        "container")


# Failing fast, and naming a process of another user ---------------------------------------

# 127.0.0.1:8080 held by uid 33 (www-data): root's look cannot read its fds.
WWW_DATA = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000    33        0 \
5151 1 0 100 0 0 10 0
@@sockets
"""


class _Users(_Engine):
    """The look as root names nobody; the look as the socket's owner names nginx."""

    def __init__(self) -> None:
        super().__init__(WWW_DATA)
        self.users: list[str] = []

    def exec(self, container: ContainerHandle, argv: list[str], **kwargs: Any) -> ExecResult:
        user = kwargs.get("user", "root")
        self.users.append(user)
        return ExecResult(rc=0, output=WWW_DATA + ("7 5151 nginx\n" if user == "33" else ""))


def test_the_owner_uid_is_read_from_the_table() -> None:
    [item] = parse_listeners(WWW_DATA)
    assert (item.uid, item.pid, item.program) == (33, None, "")
    assert owners_to_ask([item]) == [33] and owners_to_ask([item], 80) == []
    named = merge_owners([item], parse_listeners(WWW_DATA + "7 5151 nginx\n"))
    assert named[0].describe() == "nginx (pid 7) listens on 127.0.0.1:8080"


def test_a_loopback_listener_fails_at_once_naming_the_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "FIRST_LOOK_S", 0.0)
    monkeypatch.setattr(verify, "LOOK_EVERY_S", 0.1)
    monkeypatch.setattr(verify, "LOOPBACK_CONFIRM_S", 0.2)
    engine = _Users()
    started = time.monotonic()
    with pytest.raises(TestsFailed) as caught:
        wait_ready(engine, ContainerHandle("c1", "verify"),  # type: ignore[arg-type]
                   ReadyCheck(port=8080, timeout_s=60))
    assert time.monotonic() - started < 5  # not the 60 s timeout
    assert caught.value.message.startswith(
        "port 8080 cannot open from outside the container: inside it nginx (pid 7) listens on "
        "127.0.0.1:8080 only, a loopback address only the container itself reaches")
    assert "ready: {command: [bash, -c, '</dev/tcp/127.0.0.1/8080']}" in caught.value.hint
    assert engine.users[:2] == ["root", "33"]


def test_a_listener_that_moves_off_loopback_is_waited_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A server that binds loopback while it starts, then all addresses: no early failure.
    monkeypatch.setattr(verify, "FIRST_LOOK_S", 0.0)
    monkeypatch.setattr(verify, "LOOK_EVERY_S", 0.1)
    monkeypatch.setattr(verify, "LOOPBACK_CONFIRM_S", 0.6)
    engine = _Engine(RECORDED)
    looks: list[int] = []

    def exec_(container: ContainerHandle, argv: list[str], **_: Any) -> ExecResult:
        looks.append(1)
        if len(looks) > 2:
            engine.container_ip = lambda _c: "127.0.0.1"  # type: ignore[method-assign]
        return ExecResult(rc=0, output=RECORDED)

    engine.exec = exec_  # type: ignore[method-assign]
    monkeypatch.setattr(verify, "_port_open", lambda address, _port: address is not None)
    assert wait_ready(engine, ContainerHandle("c1", "verify"),  # type: ignore[arg-type]
                      ReadyCheck(port=8000, timeout_s=60))
