"""The committed image config: the parent's, with the spec's settings over it."""

from __future__ import annotations

from rolebake.image import commit_config
from rolebake.spec import HealthCheck, ImageConfig

PARENT = {
    "Cmd": ["bash"],
    "Entrypoint": None,
    "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
    "ExposedPorts": {"22/tcp": {}},
    "Labels": {"rolebake.cache-key": "sha256:old", "org.example.team": "ops"},
}


def test_inherits_cmd_and_env_when_the_spec_is_silent() -> None:
    config = commit_config(PARENT, ImageConfig(), {"rolebake.role": "image"})
    assert config["Cmd"] == ["bash"]
    assert config["Entrypoint"] == []  # never left empty: the build container's would leak
    assert "LANG=C.UTF-8" in config["Env"]


def test_spec_settings_win_and_parent_rolebake_labels_do_not_leak() -> None:
    spec = ImageConfig(cmd=("nginx", "-g", "daemon off;"), env={"LANG": "en_US.UTF-8"},
                       expose=("8080/tcp",), user="www-data", workdir="/srv",
                       labels={"org.opencontainers.image.title": "web"},
                       healthcheck=HealthCheck(test=("CMD", "true"), interval_s=5))
    config = commit_config(PARENT, spec, {"rolebake.cache-key": "sha256:new"})
    assert config["Cmd"] == ["nginx", "-g", "daemon off;"]
    assert "LANG=en_US.UTF-8" in config["Env"] and "LANG=C.UTF-8" not in config["Env"]
    assert set(config["ExposedPorts"]) == {"22/tcp", "8080/tcp"}
    assert config["User"] == "www-data" and config["WorkingDir"] == "/srv"
    assert config["Labels"] == {"org.example.team": "ops", "org.opencontainers.image.title": "web",
                                "rolebake.cache-key": "sha256:new"}
    assert config["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 5_000_000_000}


def test_new_entrypoint_drops_the_inherited_cmd() -> None:
    config = commit_config(PARENT, ImageConfig(entrypoint=("/app",)), {})
    assert config["Entrypoint"] == ["/app"] and config["Cmd"] == []

