# rpcache developer entry points. `make test` goes from a fresh clone to a
# green run: system packages, virtualenv, local Kafka/Redis/PostgreSQL, tests.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STACK := $(BIN)/python -m streams.tools.stack.cli
PYTEST_ARGS ?=

.PHONY: venv setup stack-up stack-down stack-status test test-sentinel test-cluster test-unit \
	chaos demo lint

venv: $(STAMP)

# Re-installs only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: venv
	bash scripts/install-system-deps.sh

# --secure: also proves the secure endpoints (TLS, the `rpcache` user) the
# secure-stack tests use; fails with what to run when a server lacks them.
stack-up: setup
	$(STACK) up --secure

stack-down: venv
	$(STACK) down

stack-status: venv
	$(STACK) status

# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
# RPCACHE_REQUIRE_STACK=1: after `setup` and `stack-up`, a server that does not
# answer or a tool that is missing (pgbouncer, promtool) fails its tests
# instead of skipping them (tests/needs.py).
test: stack-up
	@rc=0; RPCACHE_REQUIRE_STACK=1 $(BIN)/pytest -q -m "not chaos" $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; fi; \
	exit $$rc

# The session, cache and reader tests again with every key family on the local
# Sentinel topology (a master and a replica per family, db 8): README, Tests.
TOPOLOGY_TESTS := tests/integration/test_sessions.py tests/integration/test_caches.py \
	tests/integration/test_reader.py
test-sentinel: stack-up
	$(STACK) up --redis sentinel
	@rc=0; RPCACHE_REQUIRE_STACK=1 RPCACHE_REDIS_TOPOLOGY=sentinel \
	$(BIN)/pytest -q $(TOPOLOGY_TESTS) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; fi; \
	exit $$rc

# The same tests with every key family on the local Redis Cluster, once per key
# layout (REDIS_CLUSTER_LAYOUT hash, then design): README, Tests. Both passes run;
# the first failure's status is the target's.
test-cluster: stack-up
	$(STACK) up --redis cluster
	@rc=0; for topology in cluster cluster-design; do \
	  echo "== RPCACHE_REDIS_TOPOLOGY=$$topology"; \
	  one=0; RPCACHE_REQUIRE_STACK=1 RPCACHE_REDIS_TOPOLOGY=$$topology \
	  $(BIN)/pytest -q $(TOPOLOGY_TESTS) $(PYTEST_ARGS) || one=$$?; \
	  if [ $$one -eq 5 ]; then echo "pytest collected no tests ($$topology)" >&2; fi; \
	  if [ $$rc -eq 0 ]; then rc=$$one; fi; \
	done; \
	exit $$rc

# Kills and restarts the worker, Kafka, Redis and PostgreSQL under load (minutes).
chaos: stack-up
	RPCACHE_REQUIRE_STACK=1 $(BIN)/pytest -q -rfE -m chaos $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/pytest -q -m "not integration and not chaos" $(PYTEST_ARGS)

demo: stack-up
	$(BIN)/rpcache demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
