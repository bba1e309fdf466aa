"""Image `base`: the common role only."""

import re

import pytest


@pytest.mark.parametrize("name", ["ca-certificates", "tzdata", "iproute2", "procps", "less"])
def test_base_package_installed(host, name):
    assert host.package(name).is_installed


def test_timezone_is_file_based(host):
    # The zone is a role variable (common_timezone); check that the name file
    # and /etc/localtime agree and that libc actually uses it.
    tz = host.file("/etc/timezone")
    assert tz.is_file
    assert tz.mode == 0o644
    zone = tz.content_string.strip()
    assert zone and zone != "Etc/UTC", "common_timezone was not applied"

    localtime = host.file("/etc/localtime")
    assert localtime.is_symlink
    assert localtime.linked_to == f"/usr/share/zoneinfo/{zone}"
    assert host.file(f"/usr/share/zoneinfo/{zone}").is_file
    expected = host.check_output(f"TZ=:/usr/share/zoneinfo/{zone} date -d @0 +%z")
    assert host.check_output("date -d @0 +%z") == expected


def test_admin_user(host):
    assert host.group("ops").exists
    ops = host.user("ops")
    assert ops.exists
    assert ops.group == "ops"
    assert ops.shell == "/bin/bash"
    assert ops.home == "/home/ops"

    home = host.file("/home/ops")
    assert home.is_directory
    assert home.user == "ops"
    assert home.group == "ops"
    assert home.mode == 0o750


def test_admin_user_has_no_managed_keys(host):
    # Access is not granted through keys baked into the image.
    assert not host.file("/home/ops/.ssh/authorized_keys").exists


@pytest.mark.parametrize("path", ["/etc/motd", "/etc/profile.d/ops.sh"])
def test_managed_files(host, path):
    f = host.file(path)
    assert f.is_file
    assert f.user == "root"
    assert f.group == "root"
    assert f.mode == 0o644
    assert "Ansible managed" in f.content_string


def test_login_shell_gets_profile(host):
    # The value is a role variable (common_environment_name); a login shell
    # must export what the managed profile says.
    m = re.search(
        r'^export OPS_ENVIRONMENT="([^"]+)"$',
        host.file("/etc/profile.d/ops.sh").content_string,
        re.M,
    )
    assert m, "OPS_ENVIRONMENT not set in /etc/profile.d/ops.sh"
    assert host.check_output("bash -lc 'echo $OPS_ENVIRONMENT'") == m.group(1)
    assert m.group(1).upper() in host.file("/etc/motd").content_string
