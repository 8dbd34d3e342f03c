# The two commands: `make run` and `make test`. Both create the virtualenv
# and install what they need; nothing has to be installed by hand. Every
# package comes from a lock with its hashes (requirements*.txt, compiled from
# requirements*.in: README "Dependencies").
PYTHON ?= python3
VENV ?= .venv
PORT ?= 8000
BIN := $(VENV)/bin
# daphne's limit for one incoming websocket message (the contract: 16 KiB).
DAPHNE_ARGS := --websocket-max-message-size 16384 --websocket-max-frame-size 16384

.PHONY: run test lint bench migrate clean

$(BIN)/.installed-run: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.txt
	touch $@

$(BIN)/.installed-test: requirements.txt requirements-dev.txt $(BIN)/.installed-run
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.txt
	touch $@

migrate: $(BIN)/.installed-run
	$(BIN)/python manage.py migrate --noinput

# With DEBUG off the pages link to content-hashed names (chat.3f1e…c2.js), which
# only collectstatic writes (to STATIC_ROOT); redone only when a static file changed.
STATIC_ROOT ?= staticfiles
DEBUG_OFF := $(if $(DEBUG),$(filter-out 1 true on ok y yes,$(shell printf '%s' '$(DEBUG)' | tr A-Z a-z)))
STATIC_SOURCES := $(shell find chat/static -type f)

$(STATIC_ROOT)/staticfiles.json: $(STATIC_SOURCES) $(BIN)/.installed-run
	$(BIN)/python manage.py collectstatic --noinput -v0
	touch $@

## Set up and serve the chat on http://127.0.0.1:$(PORT)/ (SQLite + in-memory layer by default).
run: migrate $(if $(DEBUG_OFF),$(STATIC_ROOT)/staticfiles.json)
	$(BIN)/python -m chatsite.server -b 127.0.0.1 -p $(PORT) $(DAPHNE_ARGS) chatsite.asgi:application

## Lint and types (pyproject.toml): ruff's checks and format, then mypy on chat/ and chatsite/.
lint: $(BIN)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Set up and run the whole test suite (lint and types first).
test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

$(BIN)/.installed-bench: requirements-bench.txt $(BIN)/.installed-test
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-bench.txt
	touch $@

## Install the load benchmark's extras and print its usage (figures: docs/performance.md).
bench: $(BIN)/.installed-bench
	$(BIN)/python -m bench.load --help

clean:
	rm -rf $(VENV) db.sqlite3 $(STATIC_ROOT)
