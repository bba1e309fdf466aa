"""The docker SDK, imported without its ssh transport until an ssh:// engine needs it.

`import docker` imports the SDK's ssh transport, and with it paramiko: a tenth
of a second, a quarter of what a no-op build's start costs, for an engine
reached over ssh:// only. The engine package imports this module first; it
imports the SDK with the transport held back (the SDK's own `try: ... except
ImportError` around it skips it) and `ssh_transport` puts it back before an
ssh:// connection is made.
"""

from __future__ import annotations

import sys

_SSHCONN = "docker.transport.sshconn"


def _import_without_ssh() -> None:
    if "docker" in sys.modules:
        return  # imported already (a caller or a test went first): nothing to save
    sys.modules[_SSHCONN] = None  # type: ignore[assignment]  # an ImportError on import
    try:
        import docker  # noqa: F401 - imported here, once, without its ssh transport
    finally:
        if sys.modules.get(_SSHCONN, "") is None:
            del sys.modules[_SSHCONN]


def ssh_transport() -> None:
    """Make the SDK able to reach an ssh:// engine again (what `import docker` would do)."""
    import docker.api.client
    import docker.transport
    from docker.transport import sshconn

    for module in (docker.transport, docker.api.client):
        if not hasattr(module, "SSHHTTPAdapter"):
            module.SSHHTTPAdapter = sshconn.SSHHTTPAdapter


_import_without_ssh()
