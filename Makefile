# flexlog: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FLEXLOG := $(VENV)/bin/flexlog
STAMP  := $(VENV)/.installed
DEMO   := build/demo
HOLDOUT ?= web

.PHONY: install demo test lint format bench experiments clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

## The main job on the shipped ADFA-LD sample: build ADFA-U, train, evaluate, score.
demo: $(STAMP)
	$(FLEXLOG) dataset build adfa-u --holdout $(HOLDOUT) --source examples/adfa-ld-sample --out $(DEMO)/data
	$(FLEXLOG) train --train $(DEMO)/data/limited_train.jsonl --voters knn,dt,slfn --out $(DEMO)/bundle --force
	$(FLEXLOG) evaluate --bundle $(DEMO)/bundle --test $(DEMO)/data/test.jsonl
	$(FLEXLOG) score --bundle $(DEMO)/bundle --input $(DEMO)/data/test.jsonl --out $(DEMO)/predictions.jsonl

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest

bench: $(STAMP)
	$(FLEXLOG) bench --out runs/bench

## The ULAD figures of the README (5 seeds each).
experiments: $(STAMP)
	$(FLEXLOG) experiment adfa-u --out runs/adfa-u
	$(FLEXLOG) experiment synhdfs-u --out runs/synhdfs-u
	$(FLEXLOG) experiment template-evolution --out runs/template-evolution

clean:
	rm -rf build runs .pytest_cache
