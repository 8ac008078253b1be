# HiveMind. `make demo` and `make test` are all a newcomer needs (both run `make setup`).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST := $(PY) -m pytest

.PHONY: setup images demo test lint protos unit e2e bench gpu-check clean install uninstall wheelhouse

setup:
	@bash scripts/setup.sh

# Local task images (no registry): hivemind/busybox:latest and hivemind/python:3.11.
images:
	@bash agent/images.sh

demo: setup
	$(PY) scripts/demo.py

test: setup lint
	$(PYTEST) -ra

lint: setup
	$(PY) scripts/protos.py --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

protos: setup
	$(PY) scripts/protos.py

unit: setup
	$(PYTEST) -ra tests/unit

e2e: setup
	$(PYTEST) -ra tests/e2e

bench: setup
	$(PY) bench/join.py
	$(PY) bench/scheduling.py
	$(PY) bench/heartbeats.py
	$(PY) bench/docker_overhead.py
	$(PY) bench/bundle_task.py
	$(PY) bench/pull.py
	$(PY) bench/requirements.py
	$(PY) bench/ledger.py
	$(PY) bench/web.py
	$(PY) bench/transfer.py
	$(PY) bench/peers.py
	$(PY) bench/mesh.py
	$(PY) bench/metrics.py
	$(PY) bench/throughput.py

# For real machines (docs/install.md): `make install [ROLE=hub|worker|operator] [ENDPOINT=host:7443]`
# puts HiveMind in /opt/hivemind with its systemd unit; `make uninstall` removes it (state stays).
install:
	@bash scripts/install.sh

uninstall:
	@bash scripts/install.sh --uninstall

# The wheels of HiveMind and its dependencies (build/wheelhouse): what installers and the
# Ansible roles install from, offline.
wheelhouse:
	@bash scripts/wheelhouse.sh

# On a machine with an NVIDIA GPU: detection, a pulled CUDA image, one GPU per task.
gpu-check: setup
	$(PY) scripts/gpu-check.py

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache artifacts
