"""Image `web-chef`: common (Ansible, in `base`) + the `web` cookbook through role[web].

The web cookbook does what the Ansible web role does, so the image must pass
the very same checks as the `web` image; they are loaded from
tests/images/web/test_web.py rather than copied, so the two cannot drift.
What follows them is particular to a chef-built image.
"""

import importlib.util
from pathlib import Path

_WEB = Path(__file__).resolve().parent.parent / "web" / "test_web.py"
_spec = importlib.util.spec_from_file_location("rolebake_web_suite", _WEB)
assert _spec is not None and _spec.loader is not None
_web = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_web)

# The web image's checks, collected here again against this image.
test_nginx_installed = _web.test_nginx_installed
test_site_config = _web.test_site_config
test_config_is_valid = _web.test_config_is_valid
test_document_root = _web.test_document_root
test_nginx_enabled_at_boot = _web.test_nginx_enabled_at_boot
test_serves_site = _web.test_serves_site
test_common_role_applied = _web.test_common_role_applied


def test_site_is_managed_by_chef(host):
    conf = host.file("/etc/nginx/sites-available/site.conf")
    assert "Managed by Chef (cookbook web)" in conf.content_string


def test_no_chef_in_the_image(host):
    # The toolchain was lent as a volume; at most its empty mount point is left.
    for prefix in ("/opt/chef", "/opt/cinc"):
        assert not host.file(f"{prefix}/bin").exists
        assert not host.file(f"{prefix}/embedded").exists
    for state in ("/var/chef", "/var/cache/chef", "/etc/chef", "/etc/cinc", "/root/.chef"):
        assert not host.file(state).exists, state
    assert not host.exists("chef-solo") and not host.exists("cinc-solo")
    assert not host.file("/mnt/rolebake-chef").exists


def test_no_stale_apt_stamp(host):
    # The apt lists are removed before commit; nothing may claim they are fresh.
    assert not host.file("/var/lib/apt/periodic/update-success-stamp").exists
