# rolebake: `make demo` (the main job, end to end) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ROLEBAKE := $(BIN)/rolebake
DEMO_PORT ?= 18080
PYTEST_FLAGS ?=

.PHONY: install engine qemu registry podman browser base demo lint docs unit integration vm test parity bench clean-leftovers images.mk

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Byte-compiled as a wheel install would be: the checkout is installed editable, and
# with PYTHONDONTWRITEBYTECODE set every command would compile rolebake's modules again
# (about 0.14 s a start, measured on a no-op build). Up-to-date files are skipped.
install: $(VENV)/.installed
	@$(BIN)/python -m compileall -q src >/dev/null

engine:
	@scripts/ensure-host.sh engine

qemu:
	@scripts/ensure-host.sh qemu

# Headless Chromium, for the test that opens the parity HTML report.
browser:
	@scripts/ensure-host.sh browser

# A registry on loopback for the push and cache-repo tests (started once, left running).
registry:
	@scripts/ensure-host.sh registry

# Podman and buildah, for the Podman tests and the benchmark against ansible-bender.
podman:
	@scripts/ensure-host.sh podman

base: install engine
	$(ROLEBAKE) base debian:bookworm

demo: base
	$(ROLEBAKE) build web
	@scripts/demo-run.sh rolebake/web:latest $(DEMO_PORT)

# The docs site is built into a throwaway folder: a broken link, a missing page or a
# page left out of mkdocs.yml's nav fails (--strict).
lint: install
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/lint-imports
	@site=$$(mktemp -d) && trap 'rm -rf "$$site"' EXIT && \
		NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir "$$site"

# Read the docs site locally at http://127.0.0.1:8000/.
docs: install
	$(BIN)/mkdocs serve

unit: install
	$(BIN)/pytest tests/unit $(PYTEST_FLAGS)

integration: install engine registry podman base
	$(BIN)/pytest tests/integration $(PYTEST_FLAGS)

vm: install engine qemu base
	$(BIN)/pytest tests/vm $(PYTEST_FLAGS)

test: install engine qemu registry podman browser base lint
	$(BIN)/pytest tests/unit tests/integration tests/vm $(PYTEST_FLAGS)

parity: install engine qemu base
	$(ROLEBAKE) parity web --vm qemu

bench: install engine registry podman base
	$(BIN)/python bench/run.py
	$(BIN)/python bench/fleet.py

images.mk: install
	$(ROLEBAKE) makefile -o images.mk

clean-leftovers: install engine
	$(ROLEBAKE) clean
