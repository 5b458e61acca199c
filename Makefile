# Two entry points: `make demo` opens the studio on its built-in offline models, `make test` runs
# the tests (linters, type check, then pytest). Each creates .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench mutate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU wheel first, so that nothing below pulls the multi-GB CUDA build.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dit-studio --offline

test: $(STAMP)
	$(BIN)/ruff check studio tabs tests
	$(BIN)/ruff format --check studio tabs tests
	$(BIN)/mypy
	bash scripts/ensure-chromium.sh
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(BIN)/python -m pytest

# Mutation testing of the modules that carry the README's promises (pyproject [tool.mutmut]);
# about 35 minutes on 2 cores, so not part of `make test`. Prints the score table kept in the README.
mutate: $(STAMP)
	$(BIN)/pip install --quiet "mutmut==3.8.1"
	# One OpenMP thread: mutmut forks each mutant's run from a process that has used torch, and a
	# forked child whose parent started an OpenMP thread team hangs at its first parallel op.
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/mutmut run --max-children 2 || true
	$(BIN)/python scripts/mutation_report.py

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m studio.bench

clean:
	rm -rf $(VENV) .cache test-artifacts mutants
