PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: test demo bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
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
	rm -rf $(VENV) runs exports .pytest_cache
