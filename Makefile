# craft-plugin: `make demo` and `make test` do all set-up themselves (see README).
# The environment lives outside the clone: $CRAFT_VENV, else ~/.cache/craft-plugin/venv-<hash>.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ENV_SCRIPT := scripts/craft-env.sh
# Offline by design: nothing may reach the Hugging Face Hub at run time.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help env demo test bench lock

help:
	@echo "make demo   the forgetting experiment: craft demo into demo-out/ (~9.5 min on 2 CPU cores, docs/benchmarks.md)"
	@echo "make test   run the test suite"
	@echo "make env    create/update the environment and print its path"
	@echo "make bench  run benchmarks/hook_overhead.py"
	@echo "make lock   re-resolve requirements.lock (needs uv)"

env:
	@$(ENV_SCRIPT) ensure

demo:
	@V="$$($(ENV_SCRIPT) ensure)" && "$$V/bin/craft" demo --output-dir demo-out --overwrite

# One pytest-xdist worker per core; a test file's tests stay on one worker (its module fixtures
# are built once), the slowest files first (tests/conftest.py: SLOWEST_FIRST; xdist would
# otherwise send the files with the most tests first). PYTEST_ARGS="-n 0" runs them in one process.
PYTEST_ARGS ?= -n auto --dist loadfile --no-loadscope-reorder
test:
	@V="$$($(ENV_SCRIPT) ensure)" && "$$V/bin/python" -m pytest $(PYTEST_ARGS)

bench:
	@V="$$($(ENV_SCRIPT) ensure)" && "$$V/bin/python" benchmarks/hook_overhead.py

lock:
	@$(ENV_SCRIPT) lock
