"""Image `web-dev`: common + web + devtools."""

import pytest


@pytest.mark.parametrize(
    ("package", "command"),
    [
        ("curl", "curl --version"),
        ("strace", "strace -V"),
        ("lsof", "lsof -v"),
        ("tcpdump", "tcpdump --version"),
        ("vim-tiny", "vim.tiny --version"),
    ],
)
def test_debug_tool_available(host, package, command):
    assert host.package(package).is_installed
    cmd = host.run(command)
    assert cmd.rc == 0, cmd.stderr


def test_web_role_applied(host):
    assert host.package("nginx").is_installed
    assert (
        host.file("/etc/nginx/sites-enabled/site.conf").linked_to
        == "/etc/nginx/sites-available/site.conf"
    )
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    assert host.run("nginx -t").rc == 0


def test_site_reachable_with_curl(host, nginx_site, listening, http_get):
    port = nginx_site["port"]
    assert listening(f"tcp://0.0.0.0:{port}")
    assert http_get(port, "/healthz").status == 200
    out = host.check_output(f"curl -fsS http://127.0.0.1:{port}/")
    assert f"<title>{nginx_site['title']}</title>" in out


def test_common_role_applied(host):
    assert host.user("ops").home == "/home/ops"
    assert host.file("/etc/localtime").linked_to.startswith("/usr/share/zoneinfo/")
