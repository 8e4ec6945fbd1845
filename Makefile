# fedsim: `make run` runs the main job, `make test` runs the tests, `make bench` the benchmark (about 35 min).
# Both create .venv and install everything from the project's own files first.
# The Flower environment (private FLWR_HOME and SuperLink port, runtime dependency
# installation and telemetry off, offline Hugging Face) is set by `fedsim run`.

SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.installed-stamp
NODES ?= 10
RUN_CONFIG ?=
PRESET ?=

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install run test bench stop clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	# torch first, pinned to the CPU build: anything unpinned would pull a multi-GB CUDA build
	$(VENV)/bin/pip install -q -c requirements/constraints.txt torch
	$(VENV)/bin/pip install -q -c requirements/constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	fedsim run -n $(NODES) $(if $(PRESET),-p $(PRESET)) $(if $(RUN_CONFIG),-c "$(RUN_CONFIG)")

test: $(STAMP)
	ruff check .
	python -m pytest -q

bench: $(STAMP)
	fedsim bench -o results/bench

stop:
	-fedsim stop

clean: stop
	rm -rf $(VENV) .flwr .pytest_cache
