# Two entry points: `make run` (the dev server on examples/ai-chat, with the built-in models) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/edgewise dev examples/ai-chat

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

bench: $(STAMP)
	$(BIN)/python benchmarks/edge_overhead.py
	$(BIN)/python benchmarks/edge_instructions.py
	$(BIN)/python benchmarks/stream_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info
