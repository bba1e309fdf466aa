"""The committed image config: the parent's, with the spec's settings over it; imported images."""

from __future__ import annotations

import pytest

from rolebake.engine.images import _imported_id
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



@pytest.mark.parametrize("answer", [
    '{"status":"sha256:38d07620fc437ff07e50d0bf57b207ed8d760a8996881b0f91081905353a6a2d"}\r\n',
    '{"status":"sha256:38d07620fc437ff07e50d0bf57b207ed8d760a8996881b0f91081905353a6a2d",'
    '"progress":"","progressDetail":{},'
    '"id":"sha256:38d07620fc437ff07e50d0bf57b207ed8d760a8996881b0f91081905353a6a2d"}\n',
], ids=["docker", "podman"])
def test_the_id_of_an_import_is_read_from_either_engines_answer(answer: str) -> None:
    assert _imported_id(answer) == (
        "sha256:38d07620fc437ff07e50d0bf57b207ed8d760a8996881b0f91081905353a6a2d")


def test_an_import_answer_without_an_id_gives_none() -> None:
    assert _imported_id('{"error":"bad tar"}\n') is None
    assert _imported_id("not json") is None
