"""Image `web`: common + web (nginx serving the templated site)."""


def test_nginx_installed(host):
    assert host.package("nginx").is_installed


def test_site_config(host, nginx_site):
    conf = host.file("/etc/nginx/sites-available/site.conf")
    assert conf.user == "root"
    assert conf.mode == 0o644
    assert "Ansible managed" in conf.content_string
    assert nginx_site["root"] == "/var/www/site"

    enabled = host.file("/etc/nginx/sites-enabled/site.conf")
    assert enabled.is_symlink
    assert enabled.linked_to == "/etc/nginx/sites-available/site.conf"
    assert not host.file("/etc/nginx/sites-enabled/default").exists


def test_config_is_valid(host):
    cmd = host.run("nginx -t")
    assert cmd.rc == 0, cmd.stderr


def test_document_root(host, nginx_site):
    root = host.file("/var/www/site")
    assert root.is_directory
    assert (root.user, root.mode) == ("root", 0o755)
    index = host.file("/var/www/site/index.html")
    assert (index.user, index.mode) == ("root", 0o644)
    assert nginx_site["title"]


def test_nginx_enabled_at_boot(host):
    # The Debian package enables the unit; the link is there with or without
    # a running systemd.
    wants = host.file("/etc/systemd/system/multi-user.target.wants/nginx.service")
    assert wants.is_symlink


def test_serves_site(host, nginx_site, listening, http_get):
    port = nginx_site["port"]
    assert listening(f"tcp://0.0.0.0:{port}")
    resp = http_get(port, "/")
    assert resp.status == 200, resp
    assert f"<title>{nginx_site['title']}</title>" in resp.body
    health = http_get(port, "/healthz")
    assert health.status == 200, health
    assert health.body.strip() == "ok"


def test_common_role_applied(host):
    assert host.user("ops").shell == "/bin/bash"
    assert host.file("/etc/localtime").linked_to.startswith("/usr/share/zoneinfo/")
