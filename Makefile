# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DB := sqlite:///$(CURDIR)/demo/followups.db

.PHONY: install demo test lint bench clean

$(BIN)/followups: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/followups

## demo: embedded SQLite, log push backend, a few follow-ups, one send-due run
demo: install
	rm -rf demo && mkdir -p demo
	@echo "== followups db upgrade"
	FOLLOWUPS_DATABASE_URL=$(DEMO_DB) $(BIN)/followups --quiet db upgrade
	@echo "== followups schedule (three due now, one in an hour)"
	FOLLOWUPS_DATABASE_URL=$(DEMO_DB) $(BIN)/followups --quiet schedule --text "How is Maya's fever today?" --urgency urgent --provider-name Chen --token 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
	FOLLOWUPS_DATABASE_URL=$(DEMO_DB) $(BIN)/followups --quiet schedule --text "Did the rash fade overnight?" --at 2026-01-01T09:00:00Z
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

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy followup_cli

clean:
	rm -rf $(VENV) demo *.egg-info
