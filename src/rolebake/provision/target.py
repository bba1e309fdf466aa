"""Where a provisioner applies a layer: a build container, or a machine over SSH.

The same provisioner drives both, so `rolebake parity` goes through the
provisioner registry exactly as a build does; only the target differs.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rolebake.engine import ContainerHandle, Engine


@dataclass(frozen=True)
class ContainerTarget:
    """A throwaway build container on an engine."""

    engine: Engine
    container: ContainerHandle



@dataclass(frozen=True)
class SSHTarget:
    """How to reach a machine over SSH, for ssh(1), Ansible and testinfra alike.

    Attributes:
        host: Host name or address (IPv6 without brackets).
        port: TCP port of sshd.
        user: Login user; parity needs root (or a user Ansible can become root with).
        identity_file: Private key to offer, or None to let ssh use its defaults/agent.
        ssh_config: An ssh_config file to use instead of ~/.ssh/config, or None.
        check_host_key: False for throwaway VMs, whose host key and forwarded port change
            every run and must not pollute known_hosts; True for machines the user names.
    """

    host: str
    port: int = 22
    user: str = "root"
    identity_file: Path | None = None
    ssh_config: Path | None = None
    check_host_key: bool = True

    @classmethod
    def parse(cls, url: str) -> SSHTarget:
        """Parse `ssh://[user@]host[:port]` as given to `rolebake parity --vm`.

        Args:
            url: The URL; user defaults to root and port to 22.

        Returns:
            The target, checking host keys as the user's ssh would.

        Raises:
            ValueError: The URL is not of that form; the message says what is wrong.
        """
        example = "expected ssh://[user@]host[:port], e.g. ssh://root@10.0.0.5:22"
        parts = urlsplit(url.strip())
        if parts.scheme != "ssh":
            raise ValueError(f"{url!r}: not an ssh:// URL; {example}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{url!r}: unexpected path, query or fragment; {example}")
        if parts.password is not None:
            # A password on the command line ends up in shell history and process lists.
            raise ValueError(f"{url!r}: passwords are not accepted; use a key or ssh-agent")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{url!r}: port must be a number from 1 to 65535") from None
        if not parts.hostname:
            raise ValueError(f"{url!r}: no host; {example}")
        if port == 0:
            raise ValueError(f"{url!r}: port must be a number from 1 to 65535")
        if parts.username == "":
            raise ValueError(f"{url!r}: empty user name; {example}")
        return cls(host=parts.hostname, port=port or 22, user=parts.username or "root")

    @property
    def url(self) -> str:
        """`ssh://user@host:port`, also the host spec testinfra's ssh backend takes."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{self.user}@{host}:{self.port}"

    def ssh_options(self) -> list[str]:
        """Options for ssh(1) that make it non-interactive and use this target's key/config."""
        opts: list[str] = []
        if self.ssh_config is not None:
            opts += ["-F", str(self.ssh_config)]
        opts += ["-o", "BatchMode=yes"]
        if self.identity_file is not None:
            opts += ["-i", str(self.identity_file), "-o", "IdentitiesOnly=yes"]
        if not self.check_host_key:
            opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        return opts

    def ssh_argv(self, command: Sequence[str], *, connect_timeout: int = 10) -> list[str]:
        """An argv running `command` on the target.

        Args:
            command: The remote command as argv; it is quoted here, because sshd hands the
                joined string to the remote user's shell.
            connect_timeout: Seconds for the TCP connect and handshake.

        Returns:
            The full `ssh ...` argv.
        """
        return [
            "ssh",
            *self.ssh_options(),
            "-o",
            f"ConnectTimeout={connect_timeout}",
            "-p",
            str(self.port),
            "-l",
            self.user,
            self.host,
            shlex.join(command),
        ]

    def testinfra_kwargs(self) -> dict[str, str]:
        """Keyword arguments for `testinfra.get_host(target.url, **kwargs)`.

        The pytest CLI equivalents are `--hosts=<url> --ssh-config=... --ssh-identity-file=...`.
        """
        kwargs: dict[str, str] = {}
        if self.ssh_config is not None:
            kwargs["ssh_config"] = str(self.ssh_config)
        if self.identity_file is not None:
            kwargs["ssh_identity_file"] = str(self.identity_file)
        if not self.check_host_key and self.ssh_config is None:
            kwargs["ssh_extra_args"] = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
        return kwargs

    def pytest_args(self) -> list[str]:
        """Arguments for a pytest-testinfra run against this target."""
        args = [f"--hosts={self.url}"]
        if self.ssh_config is not None:
            args.append(f"--ssh-config={self.ssh_config}")
        if self.identity_file is not None:
            args.append(f"--ssh-identity-file={self.identity_file}")
        return args

    def ansible_host_vars(self) -> dict[str, str | int]:
        """Inventory variables for Ansible's ssh connection plugin."""
        hostvars: dict[str, str | int] = {
            "ansible_connection": "ssh",
            "ansible_host": self.host,
            "ansible_port": self.port,
            "ansible_user": self.user,
            # Debian 12 ships only python3; naming it skips interpreter discovery warnings.
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        if self.identity_file is not None:
            hostvars["ansible_ssh_private_key_file"] = str(self.identity_file)
        common: list[str] = []
        if self.ssh_config is not None:
            common += ["-F", str(self.ssh_config)]
        if not self.check_host_key:
            common += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        if common:
            hostvars["ansible_ssh_common_args"] = shlex.join(common)
        return hostvars

    def ansible_inventory(self, name: str = "parity-vm") -> dict[str, Any]:
        """A YAML/JSON-style inventory (the dict form ansible-runner's `inventory=` takes)."""
        return {"all": {"hosts": {name: self.ansible_host_vars()}}}

    def inventory_line(self, name: str = "parity-vm") -> str:
        """The same inventory as one INI line, values quoted for Ansible's INI parser."""
        fields = [name] + [
            f"{key}={shlex.quote(str(value))}" for key, value in self.ansible_host_vars().items()
        ]
        return " ".join(fields)


Target = ContainerTarget | SSHTarget
