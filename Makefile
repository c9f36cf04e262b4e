# The README's two commands: `make demo` (main job on synthetic data) and `make test`.
# Each creates .venv and installs what it needs, pinned by constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
HASH := $(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: demo test bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.ml-$(HASH): $(BIN)/python
	$(PIP) -e ".[ml]"
	touch $@

$(VENV)/.test-$(HASH): $(VENV)/.ml-$(HASH)
	$(PIP) -e ".[ml,test,docs]"
	touch $@

demo: $(VENV)/.ml-$(HASH)
	$(BIN)/nf demo --workdir nf-demo

test: $(VENV)/.test-$(HASH)
	$(BIN)/ruff check .
	bash .ci/install-chromium
	$(BIN)/python -m pytest

# The documentation site at http://127.0.0.1:8000/ (make test builds it with --strict, in
# tests/test_docs.py).
docs: $(VENV)/.test-$(HASH)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

bench: $(VENV)/.test-$(HASH)
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_ingest_bold5000_r2.py
	$(BIN)/python benchmarks/bench_ingest_things.py
	$(BIN)/python benchmarks/bench_query.py
	$(BIN)/python benchmarks/bench_augment.py
	$(BIN)/python benchmarks/bench_train_throughput.py
	$(BIN)/python benchmarks/bench_train_quality.py
	$(BIN)/python benchmarks/bench_reconstruct.py
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_decoder_quality.py --studies
	$(BIN)/python benchmarks/bench_lowlevel_quality.py
	$(BIN)/python benchmarks/bench_augment.py --decode
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_remote.py

clean:
	rm -rf $(VENV) nf-demo
