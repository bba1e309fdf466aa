"""The cache repo on an OCI registry: where layers and bases sit there, and whether they do.

Whether they are there is read over the registry's HTTP API, without pulling;
moving them (pull, push) goes through the engine.

Image ids survive a push and a pull (an image's id is the digest of its config, which a
registry stores as it is), so the config digest a manifest names is the id the image has
on every engine: `rolebake plan` can tell a hit from the cache repo, and compute the keys of
the layers above it, without pulling anything. Pulls and pushes go through the engine, which
reads the docker client's credentials as `docker pull` does; the lookups here read the same
credentials (`Engine.registry_credentials`) and never print or keep them beyond the process.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import platform
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin

import requests
import urllib3

from rolebake.engine import Engine, ImageInfo, Progress
from rolebake.errors import InputError, RegistryError

CACHE_REPO_ENV = "ROLEBAKE_CACHE_REPO"

_MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(
    rf"^(?P<host>[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?)"
    rf"/(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)$")
# A tag holds at most 128 of [A-Za-z0-9_.-]; the key's 40 hex digits must always fit.
_STEM_ROOM = 80


@dataclass(frozen=True)
class Repository:
    """A repository on a registry: `registry.example.com:5000/team/cache`."""

    host: str
    path: str

    def __str__(self) -> str:
        return f"{self.host}/{self.path}"

    def ref(self, tag: str) -> str:
        """`host/path:tag`."""
        return f"{self}:{tag}"


def parse_repository(text: str, *, source: str = "--cache-repo") -> Repository:
    """Read REGISTRY/PATH, as `--cache-repo` and ROLEBAKE_CACHE_REPO give it.

    Raises:
        InputError: no registry host, a tag or digest, or characters a registry refuses.
    """
    match = _REPOSITORY.match(text.strip())
    host = match.group("host") if match else ""
    # Docker's rule: the first part names a registry only with a dot, a port or `localhost`.
    if not match or not ("." in host or ":" in host or host == "localhost"):
        raise InputError(f"{source} {text!r}: expected REGISTRY/PATH, such as "
                         "registry.example.com/team/rolebake-cache, with no tag",
                         hint="the registry part needs a dot or a port (localhost:5000/cache)")
    return Repository(host=host, path=match.group("path"))


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"


@dataclass(frozen=True)
class Artifact:
    """A document put next to an image in a registry (an SBOM, an attestation)."""

    media_type: str  # of the one layer, and the manifest's artifactType
    data: bytes
    layer_annotations: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


def artifact_tag(digest: str, suffix: str) -> str:
    """The tag tools look for next to an image: `sha256-<hex>.sbom` (cosign's scheme)."""
    algorithm, _, hexdigest = digest.partition(":")
    return f"{algorithm}-{hexdigest}.{suffix}"


def split_registry(repository: str) -> tuple[str, str]:
    """`host:5000/team/web` -> (`host:5000`, `team/web`); Docker Hub's for a bare name."""
    first, sep, rest = repository.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    path = repository if sep else f"library/{repository}"
    return "registry-1.docker.io", path


@dataclass(frozen=True)
class RemoteImage:
    """An image a registry holds under a tag."""

    ref: str
    image_id: str  # the config digest: the id the image has on every engine that pulls it
    labels: Mapping[str, str]


class RegistryClient:
    """Reads manifests and image configs from one registry (distribution API v2)."""

    def __init__(self, engine: Engine, host: str, *, timeout: float = 30.0) -> None:
        """Talk to `host` with the credentials and TLS settings the engine has for it."""
        self.engine = engine
        self.host = host
        self.timeout = timeout
        self._session = requests.Session()
        self._base: str | None = None
        self._auth: dict[str, str] = {}
        self._lock = threading.Lock()

    def image(self, path: str, tag: str) -> RemoteImage | None:
        """The image `path:tag` names, or None when the registry has no such tag.

        Raises:
            RegistryError: the registry does not answer, refuses, or serves garbage.
        """
        scope = f"repository:{path}:pull"
        response = self._get(f"{path}/manifests/{tag}", scope, accept=", ".join(_MANIFEST_TYPES))
        if response.status_code == 404:
            return None
        manifest = self._json(response, f"the manifest of {path}:{tag}")
        if "manifests" in manifest:  # an index: the entry for this machine's platform
            entry = _platform_entry(manifest["manifests"])
            if entry is None:
                return None
            response = self._get(f"{path}/manifests/{entry['digest']}", scope,
                                 accept=", ".join(_MANIFEST_TYPES))
            manifest = self._json(response, f"the manifest of {path}@{entry['digest']}")
        digest = str((manifest.get("config") or {}).get("digest") or "")
        if not digest.startswith("sha256:"):
            raise RegistryError(f"{self.host}/{path}:{tag} has a manifest without a config")
        blob = self._get(f"{path}/blobs/{digest}", scope)
        if blob.status_code >= 400:
            self._json(blob, f"the config of {path}:{tag}")
        if "sha256:" + hashlib.sha256(blob.content).hexdigest() != digest:
            raise RegistryError(f"{self.host} served a config for {path}:{tag} that does not "
                                f"match its digest {digest}")
        config = self._json(blob, f"the config of {path}:{tag}")
        labels = (config.get("config") or {}).get("Labels") or {}
        return RemoteImage(ref=f"{self.host}/{path}:{tag}", image_id=digest,
                           labels={str(k): str(v) for k, v in labels.items()})

    def push_artifact(self, path: str, tag: str, artifact: Artifact) -> str:
        """Put `artifact` at `path:tag` as an OCI artifact (a blob and a manifest); its digest.

        No engine is involved: the config (OCI's empty one) and the one layer are
        uploaded as blobs, then the manifest is put under the tag.

        Raises:
            RegistryError: the registry does not answer or refuses.
        """
        scope = f"repository:{path}:pull,push"
        config = b"{}"
        for blob in (config, artifact.data):
            self._upload(path, blob, scope)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact.media_type,
            "config": {"mediaType": OCI_EMPTY, "digest": _digest(config),
                       "size": len(config)},
            "layers": [{"mediaType": artifact.media_type, "digest": _digest(artifact.data),
                        "size": len(artifact.data),
                        "annotations": dict(artifact.layer_annotations)}],
            "annotations": dict(artifact.annotations),
        }
        body = json.dumps(manifest, separators=(",", ":")).encode()
        response = self._request("PUT", f"{self._root()}/v2/{path}/manifests/{tag}", scope,
                                 headers={"Content-Type": OCI_MANIFEST}, data=body)
        if response.status_code >= 300:
            raise RegistryError(f"{self.host} refused the manifest of {path}:{tag}: "
                                f"{response.status_code} {_message(response)}")
        return _digest(body)

    def _upload(self, path: str, blob: bytes, scope: str) -> None:
        """Upload one blob (monolithic: POST for a session, PUT with the digest)."""
        digest = _digest(blob)
        there = self._request("HEAD", f"{self._root()}/v2/{path}/blobs/{digest}", scope)
        if there.status_code == 200:
            return
        started = self._request("POST", f"{self._root()}/v2/{path}/blobs/uploads/", scope)
        location = started.headers.get("Location", "")
        if started.status_code != 202 or not location:
            raise RegistryError(f"{self.host} refused an upload to {path}: "
                                f"{started.status_code} {_message(started)}")
        url = urljoin(f"{self._root()}/", location)
        url += ("&" if "?" in url else "?") + urlencode({"digest": digest})
        done = self._request("PUT", url, scope, data=blob,
                             headers={"Content-Type": "application/octet-stream"})
        if done.status_code != 201:
            raise RegistryError(f"{self.host} refused a blob of {path}: "
                                f"{done.status_code} {_message(done)}")

    def _request(self, method: str, url: str, scope: str, *,
                 headers: Mapping[str, str] | None = None,
                 data: bytes | None = None) -> requests.Response:
        response = self._send(url, headers or {}, self._auth.get(scope), method=method,
                              data=data)
        if response.status_code == 401:
            response = self._send(url, headers or {}, self._authorize(response, scope),
                                  method=method, data=data)
        if response.status_code == 401:
            raise RegistryError(f"{self.host} refused the docker client's credentials: "
                                f"{_message(response)}", hint=f"docker login {self.host}")
        return response

    # HTTP ------------------------------------------------------------------------------

    def _get(self, path: str, scope: str, *, accept: str | None = None) -> requests.Response:
        url = f"{self._root()}/v2/{path}"
        headers = {"Accept": accept} if accept else {}
        response = self._send(url, headers, self._auth.get(scope))
        if response.status_code == 401:
            response = self._send(url, headers, self._authorize(response, scope))
        if response.status_code == 401:
            raise RegistryError(f"{self.host} refused the docker client's credentials: "
                                f"{_message(response)}", hint=f"docker login {self.host}")
        return response

    def _send(self, url: str, headers: Mapping[str, str], auth: str | None, *,
              method: str = "GET", data: bytes | None = None) -> requests.Response:
        try:
            with _quiet_tls():
                return self._session.request(method, url, headers={**headers, **(
                    {"Authorization": auth} if auth else {})}, data=data,
                    timeout=self.timeout, allow_redirects=method in ("GET", "HEAD"))
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"the registry {self.host} does not answer: "
                                f"{type(exc).__name__}") from None

    def _root(self) -> str:
        """`https://host`, or `http://host` where the engine, too, would go without TLS."""
        with self._lock:
            if self._base is None:
                self._base = f"https://{self.host}"
                if plain_http(self.engine, self.host):
                    # As Docker does for an insecure registry: TLS without checking the
                    # certificate if it speaks TLS, else plain HTTP.
                    self._session.verify = False
                    try:
                        with _quiet_tls():
                            self._session.get(f"https://{self.host}/v2/", timeout=5)
                    except requests.exceptions.RequestException:
                        self._base = f"http://{self.host}"
            return self._base

    def _authorize(self, response: requests.Response, scope: str) -> str:
        """Answer the registry's challenge with the docker client's credentials."""
        challenge = response.headers.get("WWW-Authenticate", "")
        kind, _, rest = challenge.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        creds = self.engine.registry_credentials(self.host)
        user, password = creds.get("username"), creds.get("password")
        if kind.lower() == "basic":
            if not (user and password):
                raise RegistryError(f"{self.host} asks for credentials and the docker client "
                                    "has none for it", hint=f"docker login {self.host}")
            header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        elif kind.lower() == "bearer" and params.get("realm"):
            header = "Bearer " + self._token(params, scope, creds)
        else:
            raise RegistryError(f"{self.host} asks for an authentication rolebake does not "
                                f"know: {kind or 'none given'}")
        self._auth[scope] = header
        return header

    def _token(self, params: Mapping[str, str], scope: str, creds: Mapping[str, str]) -> str:
        """A bearer token from the registry's token service (anonymous, basic or refresh)."""
        query = {"service": params.get("service", ""), "scope": scope}
        try:
            if creds.get("identitytoken"):
                response = self._session.post(params["realm"], timeout=self.timeout, data={
                    **query, "grant_type": "refresh_token", "client_id": "rolebake",
                    "refresh_token": creds["identitytoken"]})
            else:
                auth = ((creds["username"], creds["password"])
                        if creds.get("username") and creds.get("password") else None)
                response = self._session.get(params["realm"], params=query, auth=auth,
                                             timeout=self.timeout)
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"the token service of {self.host} does not answer: "
                                f"{type(exc).__name__}") from None
        body = self._json(response, "a token")
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"the token service of {self.host} gave no token")
        return str(token)

    def _json(self, response: requests.Response, what: str) -> dict[str, Any]:
        if response.status_code >= 400:
            raise RegistryError(f"{self.host} refused {what}: {response.status_code} "
                                f"{_message(response)}")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise RegistryError(f"{self.host} sent {what} that is not a JSON object")
        return body


def plain_http(engine: Engine, host: str) -> bool:
    """Whether the engine reaches `host` without TLS.

    Docker does for loopback addresses, and for registries it was told are insecure.
    """
    if host.startswith("["):  # [v6 address]:port
        name = host[1:host.index("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0]
    if name == "localhost":
        return True
    try:
        address: Any = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if address is not None and address.is_loopback:
        return True
    config = engine.registry_config()
    if not ((config.get("IndexConfigs") or {}).get(host) or {}).get("Secure", True):
        return True
    return address is not None and any(
        address in ipaddress.ip_network(cidr, strict=False)
        for cidr in config.get("InsecureRegistryCIDRs") or [])


@contextlib.contextmanager
def _quiet_tls() -> Iterator[None]:
    """Keep urllib3 from warning about the unchecked TLS an insecure registry gets."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
        yield


def _platform_entry(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    for entry in entries:
        wanted = entry.get("platform") or {}
        if wanted.get("os") == "linux" and wanted.get("architecture") == arch:
            return entry
    return None


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _message(response: requests.Response) -> str:
    """The registry's own words about an error (its `errors` list), else the HTTP reason."""
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                         for e in errors if isinstance(e, dict))
    except (ValueError, AttributeError):
        text = ""
    return text or response.reason or f"HTTP {response.status_code}"


class CacheRepo:
    """A registry repository holding verified layers by cache key, and the bases they start on.

    A layer is `<repo>:<layer>-<key>`; a base image (`from:` an image reference, such as
    the one `rolebake base` makes) is `<repo>:from-<reference>`, so every runner that has
    no base of its own starts from the same image id. Only verified images are put there
    (the push step runs after verification), so a tag there is what a cache tag is locally.
    """

    def __init__(self, engine: Engine, repository: Repository) -> None:
        """Use `repository` through `engine`."""
        self.engine = engine
        self.repository = repository
        self.client = RegistryClient(engine, repository.host)

    def __str__(self) -> str:
        return str(self.repository)

    def layer_ref(self, layer_stem: str, key: str) -> str:
        """Where a verified build of a layer with cache key `key` sits."""
        return self.repository.ref(
            f"{_tag_part(layer_stem)[:_STEM_ROOM]}-{key.rsplit(':', maxsplit=1)[-1][:40]}")

    def base_ref(self, ref: str) -> str:
        """Where the base image `ref` (e.g. rolebake/debian:bookworm) sits."""
        return self.repository.ref(f"from-{_tag_part(ref)}"[:128])

    def find(self, ref: str) -> RemoteImage | None:
        """The image at `ref` in this repo, or None; nothing is pulled."""
        return self.client.image(self.repository.path, ref.rsplit(":", maxsplit=1)[-1])

    def pull(self, remote: RemoteImage, local_ref: str, progress: Progress | None = None,
             check: Callable[[], None] = lambda: None) -> ImageInfo:
        """Pull `remote` and name it `local_ref` on the engine (the repo's name is dropped).

        Raises:
            RegistryError: the pull failed, or the engine made a different image of it.
        """
        image = self.engine.fetch(remote.ref, progress, check)
        if image.id != remote.image_id:
            raise RegistryError(f"{remote.ref} is {remote.image_id[:19]} in the registry but "
                                f"{image.id[:19]} on this engine after the pull")
        self.engine.tag(image.id, local_ref)
        self.engine.remove_image(remote.ref)  # only a name: local_ref keeps the image
        found = self.engine.image(local_ref)
        if found is None:
            raise RegistryError(f"{remote.ref} was pulled but {local_ref} names nothing")
        return found

    def push(self, image_id: str, ref: str, progress: Progress | None = None,
             check: Callable[[], None] = lambda: None) -> str:
        """Push `image_id` to `ref`; the temporary name is removed again. Returns the digest."""
        self.engine.tag(image_id, ref)
        try:
            return self.engine.push(ref, progress, check)
        finally:
            self.engine.remove_image(ref)


def _tag_part(text: str) -> str:
    """Text as tag characters: `rolebake/debian:bookworm` -> `rolebake-debian-bookworm`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "x"
