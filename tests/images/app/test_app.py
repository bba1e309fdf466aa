"""Image `app`: common + app (gunicorn WSGI app on 8000, via python_runtime)."""

import json

import pytest


@pytest.fixture
def app_settings(host):
    # app_port / app_greeting are role variables; read what the role wrote.
    return json.loads(host.file("/etc/app/config.json").content_string)


@pytest.mark.parametrize("name", ["python3", "gunicorn", "systemd"])
def test_runtime_packages_installed(host, name):
    assert host.package(name).is_installed


def test_service_account(host):
    group = host.group("app")
    assert group.exists
    user = host.user("app")
    assert user.exists
    assert user.group == "app"
    assert user.uid < 1000  # system account
    assert user.shell == "/usr/sbin/nologin"
    assert user.home == "/opt/app"


def test_application_files(host):
    code = host.file("/opt/app/wsgi.py")
    assert code.user == "root"
    assert code.mode == 0o644
    assert "def application(" in code.content_string

    confdir = host.file("/etc/app")
    assert confdir.is_directory
    assert (confdir.user, confdir.group, confdir.mode) == ("root", "app", 0o750)

    conf = host.file("/etc/app/config.json")
    assert (conf.user, conf.group, conf.mode) == ("root", "app", 0o640)
    settings = json.loads(conf.content_string)
    assert {"name", "greeting", "port"} <= settings.keys()


def test_systemd_unit_installed_and_enabled(host, app_settings):
    unit = host.file("/etc/systemd/system/app.service")
    assert unit.mode == 0o644
    content = unit.content_string
    assert "User=app" in content
    assert f"--bind 0.0.0.0:{app_settings['port']}" in content
    assert "wsgi:application" in content

    wants = host.file("/etc/systemd/system/multi-user.target.wants/app.service")
    assert wants.is_symlink
    assert wants.linked_to == "/etc/systemd/system/app.service"


def test_serves_requests(host, app_settings, listening, http_get):
    port = app_settings["port"]
    assert listening(f"tcp://0.0.0.0:{port}")
    resp = http_get(port, "/")
    assert resp.status == 200, resp
    assert json.loads(resp.body)["greeting"] == app_settings["greeting"]
    health = http_get(port, "/healthz")
    assert health.status == 200, health
    assert health.body.strip() == "ok"


def test_workers_run_unprivileged(host, app_settings, listening):
    assert listening(f"tcp://0.0.0.0:{app_settings['port']}")
    procs = host.process.filter(comm="gunicorn")
    assert procs, "no gunicorn process"
    assert {p.user for p in procs} == {"app"}
