"""Shared fixtures for the image test suites (pytest-testinfra).

Each suite under tests/images/<name>/ runs against one target, e.g.

    pytest tests/images/web --hosts=docker://<container-id>
    pytest tests/images/web --hosts=ssh://root@vm.example.internal

The target is a container started from the final image (running its own
CMD) or a VM the same roles were applied to, so the checks only rely on
what the roles put there: no python3 or curl unless a role installs them.
HTTP checks therefore talk to the service with bash's /dev/tcp.
"""

import re
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

# How long a freshly started container gets to open its listening sockets.
READY_TIMEOUT = 20.0


def pytest_collection_modifyitems(config, items):
    # Without --hosts testinfra falls back to the local machine, which would
    # check the developer's workstation instead of an image.
    if config.getoption("hosts", None):
        return
    skip = pytest.mark.skip(reason="image suites need --hosts=docker://<id> or ssh://<host>")
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(skip)


def _wait(predicate, timeout=READY_TIMEOUT, interval=0.5):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


class HttpResponse:
    def __init__(self, raw):
        head, _, self.body = raw.partition("\r\n\r\n")
        lines = head.split("\r\n")
        self.status_line = lines[0] if lines else ""
        parts = self.status_line.split(" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def __repr__(self):
        return f"HttpResponse({self.status_line!r}, body={self.body[:200]!r})"


@pytest.fixture
def http_get(host):
    """GET http://127.0.0.1:<port><path> from inside the target.

    Retries until the service answers (up to READY_TIMEOUT seconds) and
    returns an HttpResponse; status 0 means nothing ever answered.
    """

    def get(port, path="/"):
        script = (
            f"exec 3<>/dev/tcp/127.0.0.1/{int(port)} && "
            f"printf 'GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n"
            "Connection: close\\r\\n\\r\\n' >&3 && "
            "timeout 5 cat <&3"
        )

        def attempt():
            cmd = host.run("bash -c %s", script)
            return HttpResponse(cmd.stdout) if cmd.rc == 0 and cmd.stdout else None

        return _wait(attempt) or HttpResponse("")

    return get


@pytest.fixture
def listening(host):
    """Return True once `spec` (e.g. "tcp://0.0.0.0:8080") is listening."""

    def check(spec):
        return _wait(lambda: host.socket(spec).is_listening)

    return check


@pytest.fixture
def nginx_site(host):
    """Port and title of the site the web role configured.

    Read from the managed files, because web_port and web_site_title are
    role variables that an image spec or inventory may override.
    """
    conf = host.file("/etc/nginx/sites-available/site.conf").content_string
    port = re.search(r"^\s*listen (\d+);", conf, re.M)
    root = re.search(r"^\s*root (\S+);", conf, re.M)
    assert port and root, "unexpected /etc/nginx/sites-available/site.conf"
    index = host.file(f"{root.group(1)}/index.html").content_string
    title = re.search(r"<title>(.*)</title>", index)
    assert title, "no <title> in index.html"
    return {"port": int(port.group(1)), "root": root.group(1), "title": title.group(1)}
