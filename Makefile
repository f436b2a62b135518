# The two commands of the README:  `make demo` (the main job) and `make test` (the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DURATION ?= 0
COUNT ?= 50
KEEP_STACK ?=

.PHONY: demo test test-unit lint stack-up stack-down bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

## The main job: the stack, the hub and COUNT simulated devices; DURATION=<s> stops it by itself
## (0 = until Ctrl-C); KEEP_STACK=1 leaves a stack the demo started running afterwards.
demo: $(VENV)/.installed
	$(PY) -m hub demo --count $(COUNT) --duration $(DURATION) $(if $(filter 1 yes true,$(KEEP_STACK)),--keep-stack)

## All checks: lint, types, the layering contract, then the unit tests and the integration tests
## (real RabbitMQ and InfluxDB processes).
test: $(VENV)/.installed lint
	$(PY) -m hub stack install
	$(PY) -m pytest tests/unit tests/integration

## The quick loop: the unit tests alone (no servers, seconds).
test-unit: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check hub devices tests bench
	$(VENV)/bin/ruff format --check hub devices tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## Benchmarks (each starts its own stack on free ports; several minutes): the simulator's table,
## then the hub's, ending with one summary: each figure beside its ceiling and goal, date, machine, versions.
## bench.record runs each one and writes the tables it printed, with the conditions, into docs/performance.md.
bench: $(VENV)/.installed
	$(PY) -m bench.record bench.sim_scale
	$(PY) -m bench.record bench.tls_cost
	$(PY) -m bench.record bench.chaos
	$(PY) -m bench.record bench.fanout
	$(PY) -m bench.record bench.cluster_compare
	$(PY) -m bench.record bench.hub_throughput
	$(PY) -m bench.record bench.alarm_storm
	$(PY) -m bench.record bench.notify_delivery
	$(PY) -m bench.record bench.logs_cost
	$(PY) -m bench.record bench.twins

stack-up: $(VENV)/.installed
	$(PY) -m hub stack up

stack-down: $(VENV)/.installed
	$(PY) -m hub stack down

clean: stack-down
	rm -rf .stack
