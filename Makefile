# The two commands of the README. Both create the virtual environment on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean

# torch is pinned here to the CPU build that lies on this machine's disk; pyproject.toml declares a
# range so that GPU users keep their own build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/lesion-harvester demo --out demo_out

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check lesion_harvester tests benchmarks

clean:
	rm -rf demo_out .pytest_cache
