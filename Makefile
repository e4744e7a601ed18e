# dblocks — two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint sysdeps bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: 2.13.0 is the CPU wheel on these machines (a plain `torch` pulls a multi-GB CUDA build)
	$(BIN)/python -m pip install -q torch==2.13.0
	# setuptools' one "Editable installation" notice (always printed for a package-dir mapping) is filtered by name
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# the main job: registry + SuperLink + 6 companies (`dbclient join`) on MNIST 5k, DP-SGD + secure aggregation
demo: $(STAMP)
	$(BIN)/dbserver demo

# System packages some tests need (PostgreSQL, Chromium, nftables); installs them when run as root with apt,
# otherwise those tests skip and say why.
sysdeps:
	./deploy/sysdeps.sh postgresql chromium nftables iproute2

# two workers, one test file each at a time: the process tests mostly wait on Flower's messaging, so they
# overlap well with the CPU-bound ones (the suite stays under 15 minutes on 2 cores); one torch/OpenMP thread
# per process, or two workers spin against each other
test: $(STAMP) sysdeps lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

# ruff (lint + format) on the tree, mypy on the four packages ([tool.ruff], [tool.mypy] in pyproject.toml). mypy
# needs the folders under their installed names (dblocks.shared, ...): build/mypy/dblocks/ links to them.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	mkdir -p build/mypy/dblocks
	for p in shared server client privacy; do ln -sfn ../../../$$p build/mypy/dblocks/$$p; done
	$(BIN)/mypy

# the docs site (site/); warnings are errors, as in the test suite (tests/deploy/test_docs.py)
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python bench/accuracy.py
	$(BIN)/python bench/memory.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
