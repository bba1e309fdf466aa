"""The parity VM's apt proxy: packages the build containers downloaded come from their cache.

The VM cannot mount the engine's volumes, so rolebake serves them: a small
HTTP proxy on 127.0.0.1 (10.0.2.2 from inside qemu's user network), which
apt in the VM is pointed at while the roles are applied. A request for a
`.deb` that is in one of the release's archive volumes (aptcache.py) is
answered from there, read through a created, never started container that
mounts them read-only; everything else (package lists, packages not cached
yet) goes on to the mirror. The counts say what the VM did not download.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rolebake.aptcache import archive_volumes, human
from rolebake.engine import ROLE_LABEL, Engine

GUEST_HOST = "10.0.2.2"  # the host, as qemu's user network shows it to the guest
CONF = "/etc/apt/apt.conf.d/00rolebake-proxy"
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
        "upgrade", "proxy-authorization", "proxy-authenticate"}


@dataclass
class ProxyStats:
    """What the proxy served: from the shared cache, and from the mirror."""

    cached: int = 0
    cached_bytes: int = 0
    fetched: int = 0
    fetched_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, cached: bool, size: int) -> None:
        """Count one answered request."""
        with self.lock:
            if cached:
                self.cached, self.cached_bytes = self.cached + 1, self.cached_bytes + size
            else:
                self.fetched, self.fetched_bytes = self.fetched + 1, self.fetched_bytes + size

    def summary(self) -> str:
        """One line for the progress output."""
        return (f"{self.cached} packages ({human(self.cached_bytes)}) from the shared apt "
                f"cache, {self.fetched} files ({human(self.fetched_bytes)}) from the mirror")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args  # apt's requests are not rolebake's output

    def _answer(self, *, with_body: bool) -> None:
        url = self.path
        name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
        if name.endswith(".deb") and with_body and self._from_cache(name):
            return
        self._from_mirror(url, with_body=with_body)

    def _from_cache(self, name: str) -> bool:
        found = self.server.proxy.open_cached(name)
        if found is None:
            return False
        size, chunks = found
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.debian.binary-package")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(chunk)
        self.server.proxy.stats.add(cached=True, size=size)
        return True

    def _from_mirror(self, url: str, *, with_body: bool) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        request = urllib.request.Request(url, headers=headers,
                                         method="GET" if with_body else "HEAD")
        try:
            response = urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as exc:
            response = exc
        except (urllib.error.URLError, OSError) as exc:
            self.send_error(502, f"rolebake apt proxy: {exc}")
            return
        with contextlib.closing(response):
            self.send_response(response.status)
            length = response.headers.get("Content-Length")
            for key, value in response.headers.items():
                if key.lower() not in _HOP:
                    self.send_header(key, value)
            if length is None:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if with_body:
                copied = _copy(response, self.wfile)
                if response.status == 200:
                    self.server.proxy.stats.add(cached=False, size=copied)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    proxy: AptProxy


class AptProxy:
    """Serves one release's shared apt archives to a VM, the mirror for the rest."""

    def __init__(self, engine: Engine, reader: str, slots: list[str]) -> None:
        """Serve the archive volumes `slots` mounts in the stopped container `reader`."""
        self.engine = engine
        self.reader = reader
        self.slots = slots
        self.stats = ProxyStats()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="rolebake-apt-proxy", daemon=True)
        self._thread.start()

    @property
    def guest_url(self) -> str:
        """The proxy as the VM reaches it."""
        return f"http://{GUEST_HOST}:{self.port}"

    def apt_conf(self) -> str:
        """The apt setting that sends the VM's http downloads through the proxy."""
        return f'Acquire::http::Proxy "{self.guest_url}/";\n'

    def open_cached(self, name: str) -> tuple[int, Iterator[bytes]] | None:
        """A package file from the shared cache, by its pool file name; None if absent."""
        if "/" in name or not name.endswith(".deb") or name.count("_") != 2:
            return None
        package, version, arch = name.split("_")
        # apt keeps a package under its version with the epoch (`1%3a1.1.2-0`), which the
        # pool file name leaves out; epochs beyond 2 are rare enough to fetch again.
        candidates = [name] + [f"{package}_{epoch}%3a{version}_{arch}" for epoch in (1, 2)]
        for candidate in candidates:
            for slot in range(len(self.slots)):
                found = self.engine.open_file(self.reader, f"/cache/{slot}/{candidate}")
                if found is not None:
                    return found
        return None

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def serve(engine: Engine, release: str, image: str) -> Iterator[AptProxy | None]:
    """Serve `release`'s shared apt archives for a `with` block (None: there are none).

    Args:
        engine: the engine holding the volumes.
        release: the release key (`debian-12`).
        image: any image to create the reading container from (it never runs).
    """
    slots = archive_volumes(engine, release)
    if not slots:
        yield None
        return
    mounts = [{"target": f"/cache/{n}", "source": name, "type": "volume", "read_only": True}
              for n, name in enumerate(slots)]
    reader = engine.create_stopped(image, name=f"rolebake-apt-proxy-{uuid.uuid4().hex[:8]}",
                                   labels={ROLE_LABEL: "verify"}, mounts=mounts)
    try:
        proxy = AptProxy(engine, reader, slots)
        try:
            yield proxy
        finally:
            proxy.close()
    finally:
        engine.remove_container(reader)


def _copy(source: Any, target: Any) -> int:
    copied = 0
    while True:
        chunk = source.read(1 << 16)
        if not chunk:
            return copied
        target.write(chunk)
        copied += len(chunk)
