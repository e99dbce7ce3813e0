# flownar: two commands do all the set-up on a fresh machine:
#   make reproduce-ek100    create .venv if missing, then run every notebook (papermill) for EK100
#   make test               unit tests + nbval on the committed smoke notebooks
# Variables: PROFILE (default|smoke|paper), DATA_ROOT (a FlowNar-Data dataset folder; empty = embedded
# synthetic data), LLM_PATH (paper profile: a local Llama-3.2-1B-Instruct folder), SEED, VENV, TORCH_SPEC.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV ?= $(ROOT)/.venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PROFILE ?= default
SEED ?= 0
# where make reproduce-* writes tables and figures (<FIG_DIR>/<dataset>/<profile>)
FIG_DIR ?= $(ROOT)/paper_figures
# make seeds-<dataset>: the seeds of the seed-to-seed spread (seed 0 is the ordinary run)
SEEDS ?= 0 1 2 3 4
DATA_ROOT ?=
LLM_PATH ?=
# the variables a user sets, checked before anything runs (a bad SEED used to fail deep inside numpy)
$(foreach s,$(SEED) $(SEEDS),$(if $(shell echo '$(s)' | grep -Ex '[0-9]+'),,\
  $(error SEED/SEEDS: '$(s)' is not a seed: a whole number >= 0 (e.g. SEED=1, SEEDS="0 1 2"))))
$(if $(filter default smoke paper,$(PROFILE)),,$(error PROFILE='$(PROFILE)': one of default, smoke, paper))

# The environment is installed from the lock file (exact versions, CPU build of torch), refreshed by `make lock`.
# On a GPU machine (nvidia-smi works) everything but torch comes from the lock and torch is PyPI's CUDA build
# (or whatever TORCH_SPEC says). A bare `torch` requirement on a CPU machine would pull gigabytes of CUDA wheels,
# so the installed torch is also a constraint for every later install (build-isolation environments included).
LOCK := $(ROOT)/requirements.lock
TORCH_CPU := $(shell sed -n 's/^torch==\([0-9.]*\).*/\1/p' $(LOCK))
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= $(if $(HAS_GPU),torch,torch==$(TORCH_CPU))
CONSTRAINTS := $(VENV)/constraints.txt
STAMP := $(VENV)/.flownar-installed
LIB := $(shell find $(ROOT)/flownar -name '*.py' -o -name '*.csv' 2>/dev/null)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# DeepSpeed JIT-builds its CPU communication op once; keep the build inside the environment
export TORCH_EXTENSIONS_DIR := $(VENV)/torch_extensions

.PHONY: help setup java test unit lint nbval lab lock docs readme test-latest data-ek100 data-ego4d data-egoexo4d reproduce-ek100 seeds-ek100 seeds-ego4d seeds-egoexo4d \
        reproduce-ego4d reproduce-egoexo4d notebooks-smoke bench-cpu bench-cpu-engine bench-gpu gpu-check clean distclean

help:
	@sed -n '1,6p' $(ROOT)/Makefile | sed 's/^# \{0,1\}//'
	@echo "targets: setup lock test test-latest lint lab docs readme data-ek100 reproduce-ek100 reproduce-ego4d reproduce-egoexo4d notebooks-smoke clean distclean"

# ---------------------------------------------------------------- environment
# install_env VENV: torch first (TORCH_SPEC), pinned as a constraint, then every locked package but torch, then
# this package without dependencies; records the lock's sha256 in VENV/.flownar-lock (provenance.json reads it).
define install_env
	@test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	@$(1)/bin/python -c 'import torch' 2>/dev/null && $(1)/bin/python -W ignore -c 'import torch; print("torch", torch.__version__, "already installed")' \
	  || { echo "installing $(TORCH_SPEC)"; $(1)/bin/python -m pip install -q "$(TORCH_SPEC)"; }
	@$(1)/bin/python -W ignore -c 'import torch; v = torch.__version__.split("+")[0]; print(f"torch=={v}")' > $(1)/constraints.txt
	@grep -v '^torch==' $(LOCK) > $(1)/lock-without-torch.txt
	PIP_CONSTRAINT=$(1)/constraints.txt $(1)/bin/python -m pip install -q -r $(1)/lock-without-torch.txt
	PIP_CONSTRAINT=$(1)/constraints.txt $(1)/bin/python -m pip install -q --no-deps -e "$(ROOT)"
	@sha256sum $(LOCK) | cut -d' ' -f1 > $(1)/.flownar-lock
endef

$(STAMP): $(ROOT)/pyproject.toml $(LOCK)
	$(call install_env,$(VENV))
	@$(MAKE) --no-print-directory java
	@touch $@

setup: $(STAMP)

# Java runtime for METEOR (pycocoevalcap); installed from the distribution's packages when missing.
java:
	@if command -v java >/dev/null 2>&1; then echo "java: $$(java -version 2>&1 | head -n1)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends default-jre-headless >/dev/null \
	  && echo "java: installed $$(java -version 2>&1 | head -n1)"; \
	else echo "WARNING: no Java runtime and no apt-get: METEOR will be skipped (install a JRE >= 8)"; fi

# Refresh the lock: the newest versions pyproject.toml allows (torch pinned to its CPU build). Commit the result.
lock: $(STAMP)
	$(PY) -m pip install -q "pip-tools>=7.4"
	echo "torch==$(TORCH_CPU)" > $(VENV)/torch-lock.txt
	cd $(ROOT) && PIP_CONSTRAINT=$(VENV)/torch-lock.txt $(VENV)/bin/pip-compile -q --upgrade --extra dev --extra distributed --extra docs \
	  --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host --no-header \
	  -c $(VENV)/torch-lock.txt -o $(LOCK) pyproject.toml
	sed -i 's/^torch==\([0-9.]*\)+cpu/torch==\1/; s|-c .*torch-lock.txt|torch pinned by make lock (TORCH_CPU)|' $(LOCK)
	sed -i '1i # Exact versions of every dependency (CPU build of torch), installed by make setup and CI.\n# Generated by `make lock` (pip-compile of pyproject.toml, extras dev, distributed and docs): do not edit by hand.' $(LOCK)

# ---------------------------------------------------------------- documentation
# The site (MkDocs, strict: a broken link or anchor is an error) into site/: the pages in docs/, each layout's
# committed results page and executed notebooks (copied to docs/results/, rendered as committed), API pages.
docs: $(STAMP)
	cd $(ROOT) && $(PY) -m flownar.docsite stage
	cd $(ROOT) && NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	@echo "site: $(ROOT)/site/index.html"

# The README's headline table, rewritten from the CSV it names (tests/test_docs.py fails when they differ).
readme: $(STAMP)
	cd $(ROOT) && $(PY) -m flownar.docsite readme

# ---------------------------------------------------------------- tests
NBVAL_FLAGS := --nbval --nbval-current-env --nbval-sanitize-with $(ROOT)/tests/nbval_sanitize.cfg
# The linter first (seconds), then the unit tests and nbval.
test: $(STAMP)
	cd $(ROOT) && $(VENV)/bin/ruff check flownar tests && $(VENV)/bin/ruff format --check flownar tests
	cd $(ROOT) && TQDM_DISABLE=1 $(PY) -m pytest -q tests $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb)) $(NBVAL_FLAGS)

# Drift check (not in CI): the newest versions pyproject.toml allows, in a separate environment, then the tests.
LATEST_VENV := $(ROOT)/.venv-latest
test-latest:
	@test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	@$(LATEST_VENV)/bin/python -c 'import torch' 2>/dev/null || $(LATEST_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	@$(LATEST_VENV)/bin/python -c 'import torch; v = torch.__version__.split("+")[0]; print(f"torch=={v}")' > $(LATEST_VENV)/constraints.txt
	PIP_CONSTRAINT=$(LATEST_VENV)/constraints.txt $(LATEST_VENV)/bin/python -m pip install -q --upgrade \
	  --upgrade-strategy eager -e "$(ROOT)[dev,distributed]"
	@$(LATEST_VENV)/bin/python -m pip list --format=freeze 2>/dev/null | grep -i -E '^(transformers|torch|peft|datasets|numpy|accelerate|deepspeed)=' 
	cd $(ROOT) && TQDM_DISABLE=1 TORCH_EXTENSIONS_DIR=$(LATEST_VENV)/torch_extensions $(LATEST_VENV)/bin/python -m pytest -q tests \
	  $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb)) $(NBVAL_FLAGS)

# Style: ruff (configured in pyproject.toml) over the library and the tests.
lint: $(STAMP)
	cd $(ROOT) && $(VENV)/bin/ruff check flownar tests && $(VENV)/bin/ruff format --check flownar tests

unit: $(STAMP)
	cd $(ROOT) && $(PY) -m pytest -q tests

# Re-execute the committed notebooks in place with their default (smoke) parameters, so that nbval compares
# real outputs. Run after changing a notebook or what it prints.
notebooks-smoke: $(STAMP)
	rm -rf $(ROOT)/runs/*/smoke $(ROOT)/paper_figures/*/smoke $(ROOT)/data/*/smoke
	cd $(ROOT) && for nb in $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb)); do \
	  TQDM_DISABLE=1 $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.kernel_name=python3 --ExecutePreprocessor.timeout=1800 $$nb || exit 1; done

# LAB_ARGS: extra arguments for jupyter lab (e.g. LAB_ARGS="--no-browser --port 8890"). As root (a container)
# Jupyter refuses to start unless told --allow-root, so it is added then, with a line saying so.
LAB_ARGS ?=
AS_ROOT = $(filter 0,$(shell id -u))
lab: $(STAMP)
	$(if $(AS_ROOT),@echo "make lab: running as root (a container?): passing --allow-root to jupyter lab")
	cd $(ROOT)/notebooks && $(VENV)/bin/jupyter lab $(if $(AS_ROOT),--allow-root) $(LAB_ARGS)

# ---------------------------------------------------------------- data
data-ek100 data-ego4d data-egoexo4d: data-%: $(STAMP)
	$(VENV)/bin/flownar data synth --layout $* --profile $(PROFILE) --seed $(SEED) --out $(ROOT)/data/$*/$(PROFILE) --overwrite

# ---------------------------------------------------------------- the pipeline
# Every numbered notebook, in order, through papermill, into paper_figures/<dataset>/<profile>/notebooks/.
# Each executed notebook is a file target that depends on the previous one, the library and the source
# notebook, so Make skips what is up to date. A failed notebook leaves no target behind.
NOTEBOOKS := $(sort $(wildcard $(ROOT)/notebooks/[0-9][0-9]_*.ipynb))

define dataset_rules
OUT_$(1) := $(FIG_DIR)/$(1)/$(PROFILE)
EXEC_$(1) := $$(patsubst $(ROOT)/notebooks/%,$$(OUT_$(1))/notebooks/%,$(NOTEBOOKS))
reproduce-$(1): $$(EXEC_$(1))
	$(VENV)/bin/flownar provenance --dataset $(1) --profile $(PROFILE) --seed $(SEED) \
	  $(if $(DATA_ROOT),--data "$(DATA_ROOT)") --out $$(OUT_$(1))
	$(VENV)/bin/flownar summary $$(OUT_$(1))
	@echo "reproduce-$(1): outputs in $$(OUT_$(1)) (results page: $$(OUT_$(1))/SUMMARY.md)"
endef
$(foreach d,ek100 ego4d egoexo4d,$(eval $(call dataset_rules,$(d))))

# one rule per (dataset, notebook): depends on the previous executed notebook of the same dataset
define notebook_rule
$(FIG_DIR)/$(1)/$(PROFILE)/notebooks/$(notdir $(2)): $(2) $(3) $(STAMP) $(LIB)
	@mkdir -p $$(@D)
	@echo "== $$$$(date +%T) $(1) / $(PROFILE): $(notdir $(2))"
	cd $(ROOT) && FLOWNAR_PROGRESS=terminal $(VENV)/bin/papermill -k python3 --cwd $(ROOT)/notebooks $(2) $$@.tmp.ipynb \
	  -p dataset $(1) -p profile $(PROFILE) -p seed $(SEED) -p data_root "$(DATA_ROOT)" \
	  -p output_dir $(FIG_DIR)/$(1)/$(PROFILE) \
	  $(if $(filter 01_%,$(notdir $(2))),-p llm_path "$(LLM_PATH)")
	@cd $(ROOT) && $(PY) -m flownar.report relativize $$@.tmp.ipynb
	@mv $$@.tmp.ipynb $$@
endef
prev_of = $(if $(filter 1,$(2)),,$(FIG_DIR)/$(1)/$(PROFILE)/notebooks/$(notdir $(word $(shell echo $$(($(2)-1))),$(NOTEBOOKS))))
$(foreach d,ek100 ego4d egoexo4d,$(foreach i,$(shell seq 1 $(words $(NOTEBOOKS))),\
  $(eval $(call notebook_rule,$(d),$(word $(i),$(NOTEBOOKS)),$(call prev_of,$(d),$(i))))))

# ---------------------------------------------------------------- the claims, over seeds
# The default pipeline once per seed of SEEDS (not part of reproduce-*: about 3x its time). Seed 0 is the ordinary
# run (paper_figures/<dataset>/<profile>); every other seed has its own world, runs and outputs under
# data/seeds/seed<s>, runs/seeds/seed<s> and paper_figures/seeds/seed<s>. Then table_claims.* in the seed-0 folder.
seeds-ek100 seeds-ego4d seeds-egoexo4d: seeds-%: $(STAMP)
	@for s in $(SEEDS); do \
	  if [ $$s = 0 ]; then $(MAKE) --no-print-directory reproduce-$* || exit 1; \
	  else FLOWNAR_DATA_DIR=$(ROOT)/data/seeds/seed$$s FLOWNAR_RUNS_DIR=$(ROOT)/runs/seeds/seed$$s \
	    $(MAKE) --no-print-directory reproduce-$* SEED=$$s FIG_DIR=$(ROOT)/paper_figures/seeds/seed$$s || exit 1; fi; \
	done
	$(VENV)/bin/flownar claims --dataset $* --out $(FIG_DIR)/$*/$(PROFILE) \
	  --dirs $(foreach s,$(SEEDS),$(if $(filter 0,$(s)),$(FIG_DIR)/$*/$(PROFILE),$(ROOT)/paper_figures/seeds/seed$(s)/$*/$(PROFILE)))
	$(VENV)/bin/flownar summary $(FIG_DIR)/$*/$(PROFILE)

# ---------------------------------------------------------------- committed benchmark runs
# Longer than the pipeline's own benchmark (notebook 04 shows these beside its run). Commit the JSON files.
BENCH_DIR := $(ROOT)/paper_figures/ek100/bench
BENCH_SYSTEMS := videollm-online,videollm-mod,flownar-c,flownar
bench-cpu: $(STAMP)
	taskset -c 0 $(VENV)/bin/flownar bench --systems flownar-c,flownar,videollm-online --frames 10000 --config mini \
	  --threads 1 --json $(BENCH_DIR)/bench_cpu_mini_static.json
	taskset -c 0 $(VENV)/bin/flownar bench --systems flownar,videollm-online --frames 1000 --config mini --threads 1 \
	  --engine hf --json $(BENCH_DIR)/bench_cpu_mini_hf_1000.json
	taskset -c 0 $(VENV)/bin/flownar bench --systems flownar,videollm-online --frames 1000 --config mini --threads 1 \
	  --json $(BENCH_DIR)/bench_cpu_mini_static_1000.json

# The engine's speed on the embedded default's model: one stream, then 16 streams at once (~3 min).
bench-cpu-engine: $(STAMP)
	taskset -c 0 $(VENV)/bin/flownar bench --systems flownar-c,flownar,videollm-online --frames 1500 --config mini \
	  --threads 1 --json $(BENCH_DIR)/bench_cpu_mini_engine_1500.json
	taskset -c 0 $(VENV)/bin/flownar bench --systems flownar-c,flownar --frames 1500 --config mini --threads 1 \
	  --streams 16 --json $(BENCH_DIR)/bench_cpu_mini_streams16_1500.json

# On a machine with a CUDA GPU: the paper's sizes in bf16 (10^4 frames; 10^5 for the DCM systems).
bench-gpu: $(STAMP)
	for cfg in llama-3.2-1b llama-3.1-8b; do \
	  $(VENV)/bin/flownar bench --systems $(BENCH_SYSTEMS) --frames 10000 --long-frames 100000 --config $$cfg \
	    --device cuda --json $(BENCH_DIR)/bench_cuda_$$cfg.json || exit 1; done

# On a borrowed GPU node (no network, its own PyTorch): the GPU tests, the real-size bench eager and captured, and
# one LoRA step at 1B size, in one run that fits in 8 minutes and writes files (flownar/gpu_check.py says which).
# No venv: the node's python with this checkout on PYTHONPATH. GPU_PYTHON=... picks another interpreter.
GPU_PYTHON ?= python3
gpu-check:
	cd $(ROOT) && PYTHONPATH=$(ROOT) $(GPU_PYTHON) -m flownar.gpu_check --out $(if $(OUT),$(OUT),$(BENCH_DIR))

# ---------------------------------------------------------------- cleaning
clean:
	rm -rf $(ROOT)/data $(ROOT)/runs $(ROOT)/paper_figures/*/smoke $(ROOT)/.pytest_cache $(ROOT)/site $(ROOT)/docs/results
	find $(ROOT) -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(ROOT)/*.egg-info
