# Two commands: `make run` (the embedded service) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install only when a requirements file or pyproject.toml changes.
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -c1-12)

.PHONY: run test test-fast demo bench migrate install clean help

help:
	@echo "make run    - start the API on 127.0.0.1:8000 and one worker (SQLite, no servers needed)"
	@echo "make test   - install what the tests need and run the whole suite"
	@echo "make demo   - one end-to-end distillation over HTTP against the running service"

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need Python 3.11 as $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python requirements.txt requirements-dev.txt pyproject.toml
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .  # the packages and the `kd` command
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/python -m jobs.admin migrate

run: install
	$(BIN)/python scripts/serve.py

test: install
	$(BIN)/python -m pytest --durations=20

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

demo: install
	$(BIN)/python scripts/demo.py

clean:
	rm -rf var tests/artifacts .pytest_cache

# B4 and B8 drive the API with wrk (Debian/Ubuntu package `wrk`); installed here when missing, else skipped
bench: install
	@command -v wrk >/dev/null 2>&1 || apt-get install -y wrk >/dev/null 2>&1 || sudo -n apt-get install -y wrk \
		>/dev/null 2>&1 || echo "wrk is not installed and could not be: B4 and B8 are skipped"
	$(BIN)/python -m bench.run_all
