"""Build secrets: given to the roles during the build only, never in a layer (invariant 6).

Secret files live on a tmpfs inside the build container (the engine never
commits a tmpfs), the vault password stays on the host (Ansible reads it from
a 0600 file, never from the environment), vaulted values are decrypted on the
host to know what to hide, and after the commit the new layer, the image
config and its history are scanned for every secret value before the image
may be tagged. Hiding the values in output is `redact.py`'s, with the
Redactor `SecretSet.redactor()` makes.
"""

from __future__ import annotations

import base64
import json
import re
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from rolebake import redact
from rolebake.engine import ContainerHandle, Engine
from rolebake.errors import BuildFailed, InputError
from rolebake.redact import MIN_LENGTH, Redactor
from rolebake.state import write_private
from rolebake.yamlfile import Vaulted, leaves

SECRETS_DIR = "/run/rolebake-secrets"
SECRET_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Secret:
    """One `--secret id=NAME,src=PATH` file."""

    id: str
    src: Path

    @classmethod
    def parse(cls, text: str) -> Secret:
        """Parse `id=NAME,src=PATH`, as `docker build --secret` takes it."""
        fields: dict[str, str] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep or key not in ("id", "src", "source") or not value:
                raise InputError(f"--secret {text!r}: expected id=NAME,src=PATH")
            fields["src" if key == "source" else key] = value
        if "id" not in fields or "src" not in fields:
            raise InputError(f"--secret {text!r}: expected id=NAME,src=PATH")
        if not SECRET_ID_RE.match(fields["id"]):
            raise InputError(f"--secret {text!r}: {fields['id']!r} is not a valid secret id")
        src = Path(fields["src"]).expanduser()
        if not src.is_file():
            raise InputError(f"--secret {fields['id']}: file not found", path=src)
        return cls(id=fields["id"], src=src)


@dataclass
class SecretSet:
    """The secrets of one build."""

    files: tuple[Secret, ...] = ()
    vault_password: str | None = None
    _extra_values: list[str] = field(default_factory=list)

    @classmethod
    def from_cli(cls, secrets: Iterable[str], vault_password_file: Path | None,
                 env_password: str | None = None) -> SecretSet | None:
        """Build the set from CLI flags; None when there is no secret at all.

        Args:
            secrets: `--secret id=NAME,src=PATH` flags.
            vault_password_file: `--vault-password-file`.
            env_password: the value of ROLEBAKE_VAULT_PASSWORD, which the CLI has
                read and removed from the environment (every process rolebake
                starts inherits it, and ansible-runner writes it into its artifacts).
        """
        files = tuple(Secret.parse(s) for s in secrets)
        ids = [s.id for s in files]
        duplicate = next((i for i in ids if ids.count(i) > 1), None)
        if duplicate:
            raise InputError(f"--secret id {duplicate!r} is given twice")
        password = None
        if vault_password_file is not None:
            if not vault_password_file.is_file():
                raise InputError("vault password file not found", path=vault_password_file)
            password = vault_password_file.read_text(encoding="utf-8").strip()
        elif env_password:
            password = env_password
        if not files and password is None:
            return None
        found = cls(files=files, vault_password=password)
        redact.register(found.values())  # hidden from here on, before anything else runs
        return found

    def add_values(self, values: Iterable[Any]) -> None:
        """Also treat these values as secret (sensitive vars, decrypted vault values)."""
        for value in values:
            for text in _strings(value):
                if len(text) >= MIN_LENGTH and text not in self._extra_values:
                    self._extra_values.append(text)
        redact.register(self._extra_values)

    def values(self) -> list[str]:
        """Every secret value to keep out of the image and out of any output."""
        found: list[str] = []
        for secret in self.files:
            text = secret.src.read_text(encoding="utf-8", errors="replace").strip()
            if len(text) >= MIN_LENGTH:
                found.append(text)
        if self.vault_password and len(self.vault_password) >= MIN_LENGTH:
            found.append(self.vault_password)
        found.extend(self._extra_values)
        return list(dict.fromkeys(found))

    def redactor(self) -> Redactor:
        """The Redactor that hides every value of this set (the CLI installs it)."""
        return Redactor(self.values())

    def tmpfs(self) -> dict[str, str]:
        """The tmpfs mount that holds secret files in the build container."""
        return {SECRETS_DIR: "mode=0700,size=16m"} if self.files else {}

    def install(self, engine: Engine, container: ContainerHandle) -> None:
        """Write the secret files onto the tmpfs.

        Through an exec, not the archive API: the archive API writes below a
        tmpfs mount, into the layer that gets committed.
        """
        for secret in self.files:
            encoded = base64.b64encode(secret.src.read_bytes()).decode("ascii")
            result = engine.exec(container, [
                "/bin/sh", "-c",
                'umask 077 && printf %s "$ROLEBAKE_SECRET" | base64 -d > "$1/$2"',
                "rolebake", SECRETS_DIR, secret.id,
            ], env={"ROLEBAKE_SECRET": encoded})
            if result.rc != 0:
                raise BuildFailed(f"could not provide secret {secret.id!r} to the build",
                                  details=result.tail())

    def remove(self, engine: Engine, container: ContainerHandle) -> None:
        """Empty the secrets tmpfs before commit (it is not committed either way)."""
        if self.files:
            engine.exec(container, ["/bin/sh", "-c", f"rm -rf {SECRETS_DIR}/* || true"])

    def ansible_vars(self) -> dict[str, str]:
        """Variables that tell roles where the secret files are."""
        return {"rolebake_secrets_dir": SECRETS_DIR} if self.files else {}

    def write_vault_password(self, directory: Path) -> Path | None:
        """Write the vault password into a 0600 file for Ansible; None without one.

        A file, not an environment variable: ansible-runner writes the
        environment it runs Ansible with into its artifacts.
        """
        if self.vault_password is None:
            return None
        path = directory / "vault-password"
        write_private(path, self.vault_password + "\n")
        return path


VAULT_HEADER = b"$ANSIBLE_VAULT;"
_INLINE_VAULT = re.compile(r"!vault\s*\|[-+]?[ \t]*\n")


def vault_values(files: Iterable[Path], password: str | None,
                 specs: Iterable[tuple[Path, Mapping[str, Any]]] = ()) -> list[str]:
    """Decrypt the vaulted vars and files among `files` and in spec vars, on the host.

    `files` are what the provisioners read for the build (their `input_files`:
    role vars and defaults, playbooks, vars files, group_vars and host_vars),
    so a vaulted value is found wherever Ansible can load it from. The plain
    values become secrets too: redacted from output, and scanned for in the
    committed layer. A wrong or missing password is bad input, found here
    rather than by Ansible half-way through a build.

    Args:
        files: the files the build's provisioners read.
        password: the vault password, if one was given.
        specs: (spec file, vars) pairs whose values may be `!vault` (Vaulted).

    Raises:
        InputError: naming the vaulted file (and line), never a value.
    """
    found: list[str] = []
    for spec_path, spec_vars in specs:
        for vaulted in _vaulted_in(spec_vars):
            found.append(_decrypt(vaulted, password, spec_path, vaulted.line))
    for path in files:
        text = _vaulted_text(path)
        if text is None:
            continue
        if text.lstrip().startswith(VAULT_HEADER.decode()):
            plain = _decrypt(text, password, path, 1)
            try:
                loaded = yaml.safe_load(plain)
            except yaml.YAMLError:
                loaded = None
            if isinstance(loaded, Mapping | list):
                # Only strings: a vaulted vars file also holds ports and flags, and
                # "8080" or "true" would match by chance all over the image and logs.
                found.extend(_strings(loaded, numbers=False))
            else:
                found.append(plain.strip())
            continue
        for match in _INLINE_VAULT.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            block: list[str] = []
            for raw in text[match.end():].splitlines():
                if not raw.strip() or not raw[:1].isspace():
                    break
                block.append(raw.strip())
            found.append(_decrypt("\n".join(block), password, path, line))
    return found


def vaulted_at(files: Iterable[Path],
               specs: Iterable[tuple[Path, Mapping[str, Any]]] = ()) -> list[tuple[Path, int]]:
    """Where the build would need the vault password: each vaulted file or `!vault` value.

    Nothing is decrypted: `plan` says what a build without a password would refuse.

    Args:
        files: the files the build's provisioners read (as for `vault_values`).
        specs: (spec file, vars) pairs whose values may be `!vault` (Vaulted).

    Returns:
        (file, line) pairs: line 1 for a whole vaulted file.
    """
    found: list[tuple[Path, int]] = []
    for spec_path, spec_vars in specs:
        found.extend((spec_path, vaulted.line) for vaulted in _vaulted_in(spec_vars))
    for path in files:
        text = _vaulted_text(path)
        if text is None:
            continue
        if text.lstrip().startswith(VAULT_HEADER.decode()):
            found.append((path, 1))
            continue
        found.extend((path, text.count("\n", 0, match.start()) + 1)
                     for match in _INLINE_VAULT.finditer(text))
    return found


def _vaulted_text(path: Path) -> str | None:
    """The file's text when it holds vaulted content (the whole file or inline values)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data.decode("utf-8", errors="replace") if VAULT_HEADER in data else None


def _decrypt(vaulted: str, password: str | None, path: Path, line: int) -> str:
    if password is None:
        raise InputError("is vault-encrypted and no vault password was given", path=path,
                         line=line, hint="pass --vault-password-file FILE or set "
                                         "ROLEBAKE_VAULT_PASSWORD")
    from ansible.errors import AnsibleError
    from ansible.parsing.vault import VaultLib, VaultSecret

    vault = VaultLib([("default", VaultSecret(password.encode("utf-8")))])
    try:
        plain = vault.decrypt(vaulted.encode("utf-8")).decode("utf-8", errors="replace")
        redact.register([plain, plain.strip()])  # hidden the moment it is known
        return plain
    except AnsibleError:
        raise InputError("could not be decrypted with the vault password given "
                         "(wrong password?)", path=path, line=line) from None


def _vaulted_in(value: Any) -> Iterable[Vaulted]:
    return (leaf for leaf in leaves(value) if isinstance(leaf, Vaulted))


def _strings(value: Any, *, numbers: bool = True) -> Iterable[str]:
    for leaf in leaves(value):
        if isinstance(leaf, Vaulted):
            continue  # ciphertext: its plain value comes from vault_values
        if isinstance(leaf, str):
            yield leaf
        elif numbers and leaf is not None and not isinstance(leaf, bool):
            yield str(leaf)


def scan_image(engine: Engine, image_id: str, secrets: SecretSet) -> None:
    """Fail the build when any secret value is in the new layer, the config or the history.

    Each value is looked for in every form `redact.value_forms` gives (plain,
    escaped, base64 at any offset, hex, URL-encoded), so a role that writes
    `{{ secret | b64encode }}` into a file fails the scan too.

    Raises:
        BuildFailed: naming the secret-bearing file or field (never the value).
    """
    needles = sorted({form.encode("utf-8") for value in secrets.values()
                      for form in redact.value_forms(value)}, key=len)
    if not needles:
        return
    with tempfile.TemporaryFile() as spool:
        for chunk in engine.save(image_id):
            spool.write(chunk)
        spool.seek(0)
        hits = _scan_saved_image(spool, needles)
    for entry in engine.history(image_id):
        text = json.dumps(entry).encode("utf-8")
        if any(n in text for n in needles):
            hits.append("docker history")
    if hits:
        raise BuildFailed(
            f"a build secret was found in the image ({', '.join(sorted(set(hits))[:5])}); "
            "the image was not tagged",
            hint="a role copied a secret into the image: keep secrets in "
                 f"{SECRETS_DIR} and out of files the image keeps",
        )


def _scan_saved_image(stream: IO[bytes], needles: list[bytes]) -> list[str]:
    hits: list[str] = []
    with tarfile.open(fileobj=stream, mode="r:") as saved:
        manifest_member = saved.extractfile("manifest.json")
        if manifest_member is None:
            raise BuildFailed("docker save produced no manifest")
        manifest = json.load(manifest_member)[0]
        config = saved.extractfile(manifest["Config"])
        if config is not None and any(n in config.read() for n in needles):
            hits.append("image config")
        top = saved.extractfile(manifest["Layers"][-1])
        if top is None:
            return hits
        with tarfile.open(fileobj=top, mode="r|") as layer:
            for member in layer:
                if any(n in member.name.encode() for n in needles):
                    hits.append(f"path name /{member.name}")
                if member.isfile():
                    handle = layer.extractfile(member)
                    if handle is not None and _contains(handle, needles):
                        hits.append(f"/{member.name}")
    return hits


def _contains(handle: IO[bytes], needles: list[bytes]) -> bool:
    overlap = max(len(n) for n in needles) - 1
    tail = b""
    while chunk := handle.read(1 << 20):
        window = tail + chunk
        if any(n in window for n in needles):
            return True
        tail = window[-overlap:] if overlap else b""
    return False
