# nudge — run `make help` for the targets.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
NUDGE := $(BIN)/nudge
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install nudge with its pinned dependencies

system-deps: ## install Debian packages the local stack and the tests need (redis-server, Prometheus, Alertmanager, JDK, Maven, openssl)
	@command -v redis-server >/dev/null && command -v java >/dev/null && command -v mvn >/dev/null && \
	  command -v promtool >/dev/null && command -v prometheus-alertmanager >/dev/null && command -v openssl >/dev/null || \
	  { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server prometheus prometheus-alertmanager default-jdk-headless maven openssl >/dev/null; \
	    else echo "missing system packages: run 'sudo apt-get install redis-server prometheus prometheus-alertmanager default-jdk-headless maven openssl'"; exit 1; fi; }

up: install system-deps ## start the local stack (Kafka KRaft + Redis)
	$(NUDGE) stack up

down: ## stop the local stack
	$(NUDGE) stack down

demo: up ## the whole loop on the local stack: traffic -> worker -> triggers -> delivery -> users react -> report
	$(BIN)/python -m bench.loop --top

test: install system-deps ## the whole suite: lint, types, layers, unit and integration tests
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest tests
	$(NUDGE) stack down

unit: install ## unit tests only (no network)
	$(BIN)/pytest tests/unit

lock: ## re-pin constraints.txt from the current environment
	$(BIN)/pip freeze --exclude-editable | grep -v '^-e' > constraints.txt

schemas: install ## regenerate deploy/schemas from the event contract
	$(BIN)/python -m nudge.schemas

clean: down ## stop the stack and remove local data
	rm -rf .nudge

.PHONY: help install system-deps up down demo test unit lock schemas clean
