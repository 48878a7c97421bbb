# Berth: the two commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
VENV := .venv/bin
# make test runs against PostgreSQL over the local socket, and Redis database 1, so it never
# touches the data of `make run` (SQLite under var/, Redis database 0).
TEST_ENV := DATABASE_URL=postgres://root@/berth REDIS_URL=redis://127.0.0.1:6379/1 CONN_MAX_AGE=0 \
	SECRET_KEY=test-only-not-secret-0123456789-0123456789-0123456789

.PHONY: run test bench soak lint bootstrap bootstrap-test clean-host

run: bootstrap
	$(VENV)/python scripts/run.py

test: bootstrap-test
	$(TEST_ENV) $(VENV)/pytest $(PYTEST_ARGS)

bench: bootstrap-test
	$(TEST_ENV) $(VENV)/python bench/run_all.py

# Orders, actions and terminations in a loop for 5 minutes against its own stack, then the
# panel and the host must agree and nothing may be left behind (scripts/soak.py).
soak: bootstrap-test
	$(TEST_ENV) $(VENV)/python scripts/soak.py $(SOAK_ARGS)

lint:
	$(VENV)/ruff check .

bootstrap:
	scripts/bootstrap.sh run

bootstrap-test:
	scripts/bootstrap.sh test
