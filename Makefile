# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DB := sqlite:///$(CURDIR)/demo/followups.db

# Pinned, hashed dependencies compiled from pyproject.toml by `make lock`: the runtime set
# (production installs, the container image) and the runtime + dev set (tests, CI).
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
# pip itself, pinned and hashed, installed before the rest: pips older than 23.3 refuse a
# pinned package that another asks for with an extra (httpx[http2]) in hash-checking mode.
PIP_LOCK := requirements-pip.lock
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links $(LOCK_ARGS)

.PHONY: install lock demo test lint bench soak clean

# Everything comes from the dev lock, hashes checked; then the project itself, which
# `pip check` confirms is satisfied (a stale lock after a new dependency fails here).
$(BIN)/followups: pyproject.toml $(DEV_LOCK) $(PIP_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(PIP_LOCK)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check || { echo "the lock files are stale: run make lock"; exit 1; }
	touch $@

install: $(BIN)/followups

## lock: re-pin every dependency from pyproject.toml (run after changing it). Existing pins
## are kept where they still fit; LOCK_ARGS='--upgrade-package NAME' moves one package,
## LOCK_ARGS=--upgrade all of them. The dev lock is constrained by the runtime lock, so
## tests run on exactly the versions production installs.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and \
		"make lock: the lock files are compiled for Python 3.11 (PYTHON=python3.11)")'
	$(BIN)/python -m pip install --quiet 'pip-tools>=7.4'
	$(PIP_COMPILE) --output-file $(LOCK) pyproject.toml
	$(PIP_COMPILE) --extra dev --constraint $(LOCK) --output-file $(DEV_LOCK) pyproject.toml
	$(PIP_COMPILE) --constraint $(DEV_LOCK) --output-file $(PIP_LOCK) requirements-pip.in

## demo: embedded SQLite, log push backend, a few follow-ups, one send-due run
demo: install
	rm -rf demo && mkdir -p demo
	@echo "== followups db upgrade"
	FOLLOWUPS_DATABASE_URL=$(DEMO_DB) $(BIN)/followups --quiet db upgrade
	@echo "== followups schedule (two due now, one two hours overdue, one in an hour)"
	FOLLOWUPS_DATABASE_URL=$(DEMO_DB) $(BIN)/followups --quiet schedule --text "How is Maya's fever today?" --urgency urgent --provider-name Chen --token 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
	FOLLOWUPS_DATABASE_URL=$(DEMO_DB) $(BIN)/followups --quiet schedule --text "Did the rash fade overnight?" --at "$$(date -u -d '2 hours ago' +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u -v-2H +%Y-%m-%dT%H:%M:%SZ)"
	FOLLOWUPS_DATABASE_URL=$(DEMO_DB) $(BIN)/followups --quiet schedule --text "Any more coughing at night?"
	FOLLOWUPS_DATABASE_URL=$(DEMO_DB) $(BIN)/followups --quiet schedule --text "Checking in tomorrow" --in 1h
	@echo "== followups send-due (push backend: log; nothing leaves this machine)"
	FOLLOWUPS_DATABASE_URL=$(DEMO_DB) FOLLOWUPS_PUSH=log $(BIN)/followups send-due
	@echo "== the same again: nothing is delivered twice"
	FOLLOWUPS_DATABASE_URL=$(DEMO_DB) FOLLOWUPS_PUSH=log $(BIN)/followups send-due
	@echo "== followups stats"
	FOLLOWUPS_DATABASE_URL=$(DEMO_DB) $(BIN)/followups stats --since 1h

## test: sets up the venv and runs every test (PostgreSQL ones skip if no server)
test: install
	$(BIN)/python -m pytest

## bench: send-due throughput against local PostgreSQL and a Node fake APNs (bench/README.md)
bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## soak: a seeded fault soak of send-due against local PostgreSQL, the fake APNs and FCM
## (tests/soak.py): SOAK_SECONDS of faults (default 180), then a drain and the checks.
## SOAK_ARGS passes flags, e.g. SOAK_ARGS='--seed 1234' to replay a seed.
SOAK_SECONDS ?= 180
soak: install
	$(BIN)/python -m tests.soak --seconds $(SOAK_SECONDS) $(SOAK_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy followup_cli tests bench

clean:
	rm -rf $(VENV) demo *.egg-info
