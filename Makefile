# fedsim: `make run` runs the main job, `make test` runs the tests.
# Both create .venv and install everything from the project's own files first.

SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.installed-stamp
NODES ?= 10
RUN_CONFIG ?=

# Flower's CLI state, local SuperLink daemon and port are private to this checkout,
# so two checkouts on one machine never share a daemon.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export FLWR_HOME := $(CURDIR)/.flwr
export FLWR_LOCAL_SUPERLINK_HTTP_API_PORT := $(shell python3 -c "import zlib; print(39100 + zlib.crc32(b'$(CURDIR)') % 800)")
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO := 0
export RAY_DEDUP_LOGS := 0
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export FEDSIM_RESULTS_ROOT := $(CURDIR)

.PHONY: install run test stop clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	# torch first, pinned to the CPU build: anything unpinned would pull a multi-GB CUDA build
	$(VENV)/bin/pip install -q -c requirements/constraints.txt torch
	$(VENV)/bin/pip install -q -c requirements/constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	flwr run . --stream \
	  --federation-config "num-supernodes=$(NODES) client-resources-num-cpus=1" \
	  $(if $(RUN_CONFIG),--run-config "$(RUN_CONFIG)")

test: $(STAMP)
	ruff check .
	python -m pytest -q

stop:
	@pids=$$(ss -ltnpH "sport = :$(FLWR_LOCAL_SUPERLINK_HTTP_API_PORT)" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); \
	if [ -n "$$pids" ]; then kill $$pids && echo "stopped local SuperLink ($$pids)"; else echo "no local SuperLink running"; fi

clean: stop
	rm -rf $(VENV) .flwr .pytest_cache
