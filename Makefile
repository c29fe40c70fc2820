PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: test oracles demo bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Oracles of the cross-version tests (tests/test_numpy_versions.py), each in
# its own venv: the oldest numpy that pyproject.toml allows (with this package)
# and Theano 1.0.5 with its numpy 1.23; archives written in one interpreter
# are read in another. Both need Python 3.10 or 3.11 (numpy 1.24's wheels):
# ORACLE_PYTHON. `make oracles` installs them alone.
ORACLE_PYTHON ?= $(PYTHON)
NUMPY_FLOOR := $(shell sed -n 's/^ *"numpy>=\([0-9.]*\)".*/\1/p' pyproject.toml)
VENV_NUMPY_OLDEST := .venv-numpy-oldest
VENV_THEANO := .venv-theano
ORACLE_STAMPS := $(VENV_NUMPY_OLDEST)/.installed $(VENV_THEANO)/.installed
oracle_venv = $(ORACLE_PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 10), (3, 11)) \
  and "ORACLE_PYTHON=$(ORACLE_PYTHON) is Python %d.%d: the oracles need 3.10 or 3.11" % sys.version_info[:2])' \
  && rm -rf $(1) && $(ORACLE_PYTHON) -m venv $(1)

$(VENV_NUMPY_OLDEST)/.installed: pyproject.toml
	$(call oracle_venv,$(VENV_NUMPY_OLDEST))
	$(VENV_NUMPY_OLDEST)/bin/python -m pip install --quiet --only-binary numpy 'numpy==$(NUMPY_FLOOR).*' -e .
	touch $@

$(VENV_THEANO)/.installed:
	$(call oracle_venv,$(VENV_THEANO))
	$(VENV_THEANO)/bin/python -m pip install --quiet --only-binary numpy,scipy \
	  'numpy==1.23.*' 'scipy==1.9.*' six Theano==1.0.5
	touch $@

oracles: $(ORACLE_STAMPS)

test: $(STAMP) $(ORACLE_STAMPS)
	$(BIN)/python -m pytest -m "not soak" $(PYTEST_ARGS)

# The demo: train the MLP on local disk under ./runs with a planned crash at
# step 120 (the retry resumes from checkpoint 100), export today's snapshot to
# ./exports, then show both with `ckpt`. A second run finds the work done.
DEMO_DATE := $(shell date -u +%F)
DEMO_LUIGI := LUIGI_CONFIG_PATH=configs/luigi.cfg $(BIN)/luigi --module luigi_checkpoint.pipeline.mlp

demo: $(STAMP)
	$(DEMO_LUIGI) ExportMLP --date $(DEMO_DATE) --after-training --fail-at-step 120
	@for run in runs/TrainMLP/*/; do echo "== ckpt ls $$run"; $(BIN)/ckpt ls "$$run"; done
	@for snap in exports/TrainMLP/*/$(DEMO_DATE)/snapshot.zip; do echo "== ckpt inspect $$snap"; $(BIN)/ckpt inspect "$$snap"; done
	@echo "== checkpoints: $(CURDIR)/runs  snapshots: $(CURDIR)/exports  config: configs/luigi.cfg"

# The benchmark (issue 6): installs the `bench` extra (safetensors, torch==2.13.0,
# psutil) plus the test extra (moto's S3 server for the S3 cases), then runs
# the side-by-side table. BENCH_ARGS passes options, e.g. "--quick" or "--json bench.json".
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

soak: $(STAMP)
	$(BIN)/python -m tests.soak.run $(SOAK_ARGS)

clean:
	rm -rf $(VENV) $(VENV_NUMPY_OLDEST) $(VENV_THEANO) runs exports .pytest_cache
