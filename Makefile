# Set-up is part of every target: the venv is created and requirements installed when missing
# (or when requirements.txt / pyproject.toml changed), so a fresh clone needs only `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint unit demo demo-claim bench clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

unit: $(STAMP)
	$(PY) -m pytest

test: lint unit

demo: $(STAMP)
	$(PY) demo/run_demo.py

# Not part of `make demo`: its 12 runs (about 4 min of CPU work on 2 cores, estimated) would take the demo
# to or past its 10 minutes (demo/CLAIM.md).
demo-claim: $(STAMP)
	$(PY) demo/claim.py

bench: $(STAMP)
	$(PY) bench/regularizer.py
	$(PY) bench/fds.py

clean-venv:
	rm -rf $(VENV)
