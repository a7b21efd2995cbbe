# The two commands of the README. Both create the virtual environment on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser demo test lint clean

# torch is pinned here to the CPU build that lies on this machine's disk; pyproject.toml declares a
# range so that GPU users keep their own build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The reviewer's browser test drives Debian's Chromium (never a downloaded browser). Installed here
# when missing and this is root on Debian; otherwise that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser test"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	      echo "note: could not install chromium: the browser test will be skipped"; \
	  else echo "note: chromium is not installed (apt-get install chromium): the browser test will be skipped"; fi; }

demo: install
	$(BIN)/lesion-harvester demo --out demo_out

test: install browser
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check lesion_harvester tests benchmarks

clean:
	rm -rf demo_out .pytest_cache
