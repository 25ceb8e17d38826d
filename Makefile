# Two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: pip takes the local CPU wheel, so no install pulls CUDA wheels.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m analysis demo --out out

test: $(STAMP)
	$(PY) -m ruff check graphfilters analysis tests benchmarks notebooks
	$(PY) -m pytest -n 2 --timeout=600

docs: $(STAMP)
	$(PY) -m mkdocs build --strict --site-dir site

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf out site .pytest_cache
