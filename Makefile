# comem-sim developer targets. `make test` builds .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Extras installed into .venv; CI adds `serve` (torch CPU + transformers) for the live loop.
EXTRAS ?= dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# Every install takes its versions from the lock (a pip constraints file: the resolved
# version of every direct and transitive dependency, and of the build backend), so a
# release on the registry cannot change what `make test` or CI runs. `make lock`
# refreshes it on purpose (README, "Set-up").
LOCK := requirements/lock.txt
LOCK_VENV := .venv-lock

.PHONY: venv run test test-fast test-slow test-live lint bench figures clean lock docs why

venv: $(STAMP)

$(VENV):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "error: comem-sim needs Python >= 3.11; '$(PYTHON)' is $$($(PYTHON) --version 2>&1)." \
	         "Run e.g. 'make PYTHON=python3.11'." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-install only when pyproject.toml or the lock changes. The build backend comes from
# the lock too (no build isolation: an isolated build would fetch the newest setuptools).
$(STAMP): pyproject.toml $(LOCK) | $(VENV)
	$(BIN)/python -m pip install -q -c $(LOCK) setuptools wheel
	$(BIN)/python -m pip install -q --no-build-isolation -c $(LOCK) -e '.[$(EXTRAS)]'
	@touch $(STAMP)

# Refresh the lock: resolve the newest releases pyproject.toml allows in a scratch venv,
# run the whole suite there (live tests included), and only then write the lock.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade setuptools wheel
	$(LOCK_VENV)/bin/python -m pip install -q -e '.[dev,serve]'
	$(LOCK_VENV)/bin/python -m pytest -q
	{ echo "# comem-sim lock: written by 'make lock' on $$(date -u +%F) after the suite passed"; \
	  echo "# (Python $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version(), platform.machine())'))."; \
	  echo "# Used as pip constraints (-c) by every install; edit pyproject.toml, then 'make lock'."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip=='; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(LOCK_VENV)

run: $(STAMP)
	$(BIN)/comem run    # the default experiment: the authors' documented setup

# Every test (what CI runs); the lanes split it by marker (pyproject.toml): fast is what
# is left without the slow (over ~1.5 s each) and live (real servers) ones.
test: $(STAMP)
	$(BIN)/pytest -q

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow and not live"

test-slow: $(STAMP)
	$(BIN)/pytest -q -m "slow and not live"

test-live: $(STAMP)
	$(BIN)/pytest -q -m live

# The docs' generated pages (scenario and CLI reference, front page), then the site.
docs: $(STAMP)
	$(BIN)/python -m comem.docs_gen
	$(BIN)/mkdocs build --strict

# The "why answers differ" page: comem explain on the four verdicts (a few minutes).
why: $(STAMP)
	$(BIN)/python -m comem.why --workers 2

figures: $(STAMP)
	$(BIN)/comem figures

lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy calibration sim theory comem live

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks -q || [ $$? -eq 5 ]  # 5: no benchmarks collected yet

clean:
	rm -rf build dist site *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
	rm -rf $(LOCK_VENV)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
