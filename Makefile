# `make demo` and `make test` work on a fresh machine: they create .venv from requirements.txt first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test

$(STAMP): requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) tools/smoke_run.py

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q
