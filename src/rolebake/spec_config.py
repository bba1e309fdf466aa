"""The `config:` section of an image spec (and the helpers it shares with spec.py)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rolebake.errors import InputError
from rolebake.yamlfile import Fields, YamlList, kind

ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LABEL_NAME_RE = re.compile(r"(?=.*\S)[^\x00-\x1f\x7f]+")
PORT_RE = re.compile(r"(\d{1,5})(?:/(tcp|udp|sctp))?")
CONFIG_KEYS = {
    "cmd", "entrypoint", "env", "user", "workdir", "expose", "volumes", "labels", "healthcheck",
}
# Docker keeps durations as int64 nanoseconds; a year is past any sane wait
# and far inside that range.
MAX_DURATION_S = 365 * 24 * 3600.0
MAX_RETRIES = 1_000_000


@dataclass(frozen=True)
class HealthCheck:
    """A HEALTHCHECK for the image config, as Docker stores it."""

    test: tuple[str, ...]
    interval_s: float | None = None
    timeout_s: float | None = None
    retries: int | None = None
    start_period_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the canonical form used for hashing and reports."""
        return {
            "test": list(self.test),
            "interval_s": self.interval_s,
            "timeout_s": self.timeout_s,
            "retries": self.retries,
            "start_period_s": self.start_period_s,
        }


@dataclass(frozen=True)
class ImageConfig:
    """The runtime config committed with an image. None means "inherit from the parent"."""

    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    user: str | None = None
    workdir: str | None = None
    expose: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    healthcheck: HealthCheck | None = None

    def overlay(self, top: ImageConfig) -> ImageConfig:
        """Return this config with every setting `top` makes applied over it."""
        return ImageConfig(
            cmd=top.cmd if top.cmd is not None else self.cmd,
            entrypoint=top.entrypoint if top.entrypoint is not None else self.entrypoint,
            env={**self.env, **top.env},
            user=top.user if top.user is not None else self.user,
            workdir=top.workdir if top.workdir is not None else self.workdir,
            expose=tuple(dict.fromkeys(self.expose + top.expose)),
            volumes=tuple(dict.fromkeys(self.volumes + top.volumes)),
            labels={**self.labels, **top.labels},
            healthcheck=top.healthcheck if top.healthcheck is not None else self.healthcheck,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the canonical form used for hashing and reports."""
        return {
            "cmd": list(self.cmd) if self.cmd is not None else None,
            "entrypoint": list(self.entrypoint) if self.entrypoint is not None else None,
            "env": dict(sorted(self.env.items())),
            "user": self.user,
            "workdir": self.workdir,
            "expose": sorted(self.expose),
            "volumes": sorted(self.volumes),
            "labels": dict(sorted(self.labels.items())),
            "healthcheck": self.healthcheck.to_dict() if self.healthcheck else None,
        }



def _key_text(key: Any) -> str:
    """A mapping key in a message; YAML 1.1 turns unquoted yes/no/on/off into booleans."""
    if isinstance(key, bool):
        return f"{key!r} (YAML reads an unquoted yes, no, on, off, true or false as a " \
               "boolean: quote it)"
    return repr(key)


def _scalar_text(fields: Fields, key: Any) -> str:
    """An env or label value: a string, or a finite number written as one."""
    value = fields.data[key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise fields.fail(key, f"expected a string, got {kind(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise fields.fail(key, f"expected a string, got {value} (quote it)")
    if isinstance(value, str) and "\x00" in value:
        raise fields.fail(key, "a value cannot hold a NUL byte")
    return str(value)


def _config(section: Fields | None) -> ImageConfig:
    if section is None:
        return ImageConfig()
    section.reject_unknown(CONFIG_KEYS)
    env: dict[str, str] = {}
    env_fields = section.mapping("env")
    if env_fields is not None:
        for key in env_fields.data:
            if not isinstance(key, str) or not ENV_NAME_RE.fullmatch(key):
                raise InputError(f"config.env: {_key_text(key)} is not a valid variable name",
                                 path=section.path, line=env_fields.line_of(key))
            env[key] = _scalar_text(env_fields, key)
    labels: dict[str, str] = {}
    label_fields = section.mapping("labels")
    if label_fields is not None:
        for key in label_fields.data:
            line = label_fields.line_of(key)
            if isinstance(key, str) and key.startswith("rolebake."):
                raise InputError(f"config.labels: {key!r} is not allowed (the rolebake.* labels "
                                 "are the tool's)", path=section.path, line=line)
            if not isinstance(key, str) or not LABEL_NAME_RE.fullmatch(key):
                raise InputError(f"config.labels: {_key_text(key)} is not a label name "
                                 "(no line breaks or control characters)",
                                 path=section.path, line=line)
            labels[key] = _scalar_text(label_fields, key)
    expose = _ports(section)
    user = section.text("user", what="a user (name or uid, optionally :group)")
    workdir = section.text("workdir", what="an absolute path")
    if workdir is not None and not workdir.startswith("/"):
        raise section.fail("workdir", f"{workdir!r} must be an absolute path")
    volumes = section.text_list("volumes", check=lambda v: v.startswith("/"),
                               what="an absolute path")
    return ImageConfig(
        cmd=section.command("cmd", allow_empty=True),
        entrypoint=section.command("entrypoint", allow_empty=True),
        env=env,
        user=user,
        workdir=workdir,
        expose=expose,
        volumes=volumes,
        labels=labels,
        healthcheck=_healthcheck(section.mapping("healthcheck")),
    )


def _ports(section: Fields) -> tuple[str, ...]:
    if not section.has("expose"):
        return ()
    value = section.data["expose"]
    if not isinstance(value, list):
        raise section.fail("expose", f"expected a list of ports, got {kind(value)}")
    ports: list[str] = []
    for index, item in enumerate(value):
        line = value.line_of(index) if isinstance(value, YamlList) else section.line
        match = PORT_RE.fullmatch(str(item)) if isinstance(item, int | str) else None
        if isinstance(item, bool) or match is None or not 0 < int(match.group(1)) < 65536:
            raise InputError(f"config.expose[{index}]: {item!r} is not a port (1-65535[/tcp|udp])",
                             path=section.path, line=line)
        ports.append(f"{int(match.group(1))}/{match.group(2) or 'tcp'}")
    return tuple(dict.fromkeys(ports))


def _healthcheck(section: Fields | None) -> HealthCheck | None:
    if section is None:
        return None
    section.reject_unknown({"test", "interval", "timeout", "retries", "start_period"})
    test = section.command("test")
    if test is None:
        raise InputError("config.healthcheck: missing required key 'test'",
                         path=section.path, line=section.line)
    if test[:2] == ("/bin/sh", "-c"):
        test = ("CMD-SHELL", test[2])
    elif test[0] not in ("CMD", "CMD-SHELL", "NONE"):
        test = ("CMD", *test)
    # Docker's forms: [NONE], [CMD, program, args...], [CMD-SHELL, one command line].
    if test[0] == "NONE" and len(test) > 1:
        raise section.fail("test", "NONE (no healthcheck) takes nothing after it")
    if test[0] == "CMD" and (len(test) < 2 or not test[1].strip()):
        raise section.fail("test", "CMD needs the program to run after it")
    if test[0] == "CMD-SHELL" and (len(test) != 2 or not test[1].strip()):
        raise section.fail("test", "CMD-SHELL needs exactly one command line after it")
    retries = section.number("retries", minimum=0, maximum=MAX_RETRIES, integer=True)
    return HealthCheck(
        test=test,
        interval_s=section.number("interval", minimum=0.001, maximum=MAX_DURATION_S),
        timeout_s=section.number("timeout", minimum=0.001, maximum=MAX_DURATION_S),
        retries=int(retries) if retries is not None else None,
        start_period_s=section.number("start_period", maximum=MAX_DURATION_S),
    )
