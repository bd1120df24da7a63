# comem-sim developer targets. `make test` builds .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Extras installed into .venv; CI adds `serve` (torch CPU + transformers) for the live loop.
EXTRAS ?= dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: venv run test lint bench figures clean

venv: $(STAMP)

$(VENV):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "error: comem-sim needs Python >= 3.11; '$(PYTHON)' is $$($(PYTHON) --version 2>&1)." \
	         "Run e.g. 'make PYTHON=python3.11'." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-install only when pyproject.toml changes.
$(STAMP): pyproject.toml | $(VENV)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/comem run scenarios/paper_latency_glm47.toml

test: $(STAMP)
	$(BIN)/pytest -q

figures: $(STAMP)
	$(BIN)/comem figures

lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy calibration sim theory comem live

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks -q || [ $$? -eq 5 ]  # 5: no benchmarks collected yet

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
