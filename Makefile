# raytide — the two commands a new machine needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck unit integration bench install system-deps plugin-example clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Real servers for the integration tests, and the tools the deploy/ checks run (promtool comes with
# prometheus, systemd-analyze with systemd), come from Debian packages.
system-deps:
	@missing=""; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v promtool >/dev/null 2>&1 || [ -x /usr/bin/promtool ] || missing="$$missing prometheus"; \
	command -v systemd-analyze >/dev/null 2>&1 || [ -x /usr/bin/systemd-analyze ] || missing="$$missing systemd"; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

lint: install
	$(BIN)/ruff check autoscaler policies tests bench deploy
	$(BIN)/ruff format --check autoscaler policies tests bench deploy
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q -m "not integration" tests

# The out-of-tree example plugin is installed and run through the contract suite, as a plugin author would.
plugin-example: install
	PY=$(CURDIR)/$(BIN)/python bash docs/examples/raytide-policy-example/check.sh

test: install system-deps lint typecheck plugin-example
	$(BIN)/pytest -q tests

demo: install
	$(BIN)/raytide demo

# -P: bench/ is not put first on sys.path, where bench/policies.py would shadow the policies package.
bench: install
	$(BIN)/python -P bench/decision_latency.py
	$(BIN)/python -P bench/plan_digest.py
	$(BIN)/python -P bench/policies.py
	$(BIN)/python -P bench/sim_speed.py
	$(BIN)/python -P bench/reaction.py
	$(BIN)/python -P bench/warm_pool.py
	$(BIN)/python -P bench/cli_startup.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
