"""The parity VM's apt proxy: cached packages from the shared cache, the rest from the mirror."""

from __future__ import annotations

import http.server
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rolebake.parity.aptproxy import AptProxy


class Engine:
    """The engine as the proxy reads the cache volumes: one file in slot 1."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def open_file(self, container: str, path: str) -> tuple[int, Iterator[bytes]] | None:
        self.asked.append(path)
        if path == "/cache/1/nginx_1.22.1-9_amd64.deb":
            return 6, iter([b"cac", b"hed"])
        if path == "/cache/0/libbpf1_1%3a1.1.2-0_amd64.deb":  # kept with its epoch
            return 3, iter([b"bpf"])
        return None


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "tzdata_2024a_all.deb").write_bytes(b"from the mirror")
    (tmp_path / "InRelease").write_text("signed lists")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):  # type: ignore[no-untyped-def]
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_proxy_serves_cached_packages_and_passes_the_rest(mirror: str) -> None:
    engine = Engine()
    proxy = AptProxy(engine, "reader", ["v0", "v1"])  # type: ignore[arg-type]
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler(
            {"http": f"http://127.0.0.1:{proxy.port}"}))
        with opener.open(f"{mirror}/pool/nginx_1.22.1-9_amd64.deb") as reply:
            assert reply.read() == b"cached"
        with opener.open(f"{mirror}/pool/libbpf1_1.1.2-0_amd64.deb") as reply:
            assert reply.read() == b"bpf"
        with opener.open(f"{mirror}/pool/tzdata_2024a_all.deb") as reply:
            assert reply.read() == b"from the mirror"
        with opener.open(f"{mirror}/InRelease") as reply:
            assert reply.read() == b"signed lists"
        with pytest.raises(urllib.error.HTTPError) as missing:
            opener.open(f"{mirror}/pool/none_1_all.deb")
        assert missing.value.code == 404
    finally:
        proxy.close()
    assert engine.asked[:2] == ["/cache/0/nginx_1.22.1-9_amd64.deb",
                                "/cache/1/nginx_1.22.1-9_amd64.deb"]
    assert (proxy.stats.cached, proxy.stats.cached_bytes) == (2, 9)
    assert (proxy.stats.fetched, proxy.stats.fetched_bytes) == (2, 27)
    assert proxy.apt_conf() == f'Acquire::http::Proxy "http://10.0.2.2:{proxy.port}/";\n'
