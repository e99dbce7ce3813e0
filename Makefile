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
DATA_ROOT ?=
LLM_PATH ?=

# CPU build of torch unless a GPU is present (then PyPI's CUDA build) or TORCH_SPEC is given. A bare `torch`
# requirement on a CPU machine would pull gigabytes of CUDA wheels, so the CPU pin is also a constraint for
# every later install (build-isolation environments included).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= $(if $(HAS_GPU),torch,torch==2.13.0)
CONSTRAINTS := $(VENV)/constraints.txt
STAMP := $(VENV)/.flownar-installed
LIB := $(shell find $(ROOT)/flownar -name '*.py' -o -name '*.csv' 2>/dev/null)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# DeepSpeed JIT-builds its CPU communication op once; keep the build inside the environment
export TORCH_EXTENSIONS_DIR := $(VENV)/torch_extensions

.PHONY: help setup java test unit nbval lab data-ek100 data-ego4d data-egoexo4d reproduce-ek100 reproduce-ego4d \
        reproduce-egoexo4d notebooks-smoke bench-cpu bench-gpu clean distclean

help:
	@sed -n '1,6p' $(ROOT)/Makefile | sed 's/^# \{0,1\}//'
	@echo "targets: setup test lab data-ek100 reproduce-ek100 reproduce-ego4d reproduce-egoexo4d notebooks-smoke clean distclean"

# ---------------------------------------------------------------- environment
$(STAMP): $(ROOT)/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c 'import torch' 2>/dev/null && $(PY) -c 'import torch; print("torch", torch.__version__, "already installed")' \
	  || { echo "installing $(TORCH_SPEC)"; $(PY) -m pip install -q "$(TORCH_SPEC)"; }
	@$(PY) -c 'import torch; v = torch.__version__.split("+")[0]; print(f"torch=={v}")' > $(CONSTRAINTS)
	PIP_CONSTRAINT=$(CONSTRAINTS) $(PY) -m pip install -q -e "$(ROOT)[dev,distributed]"
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

# ---------------------------------------------------------------- tests
NBVAL_FLAGS := --nbval --nbval-current-env --nbval-sanitize-with $(ROOT)/tests/nbval_sanitize.cfg
test: $(STAMP)
	cd $(ROOT) && TQDM_DISABLE=1 $(PY) -m pytest -q tests $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb)) $(NBVAL_FLAGS)

unit: $(STAMP)
	cd $(ROOT) && $(PY) -m pytest -q tests

# Re-execute the committed notebooks in place with their default (smoke) parameters, so that nbval compares
# real outputs. Run after changing a notebook or what it prints.
notebooks-smoke: $(STAMP)
	rm -rf $(ROOT)/runs/*/smoke $(ROOT)/paper_figures/*/smoke $(ROOT)/data/*/smoke
	cd $(ROOT) && for nb in $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb)); do \
	  TQDM_DISABLE=1 $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.kernel_name=python3 --ExecutePreprocessor.timeout=1800 $$nb || exit 1; done

lab: $(STAMP)
	cd $(ROOT)/notebooks && $(VENV)/bin/jupyter lab

# ---------------------------------------------------------------- data
data-ek100 data-ego4d data-egoexo4d: data-%: $(STAMP)
	$(VENV)/bin/flownar data synth --layout $* --profile $(PROFILE) --seed $(SEED) --out $(ROOT)/data/$*/$(PROFILE) --overwrite

# ---------------------------------------------------------------- the pipeline
# Every numbered notebook, in order, through papermill, into paper_figures/<dataset>/<profile>/notebooks/.
# Each executed notebook is a file target that depends on the previous one, the library and the source
# notebook, so Make skips what is up to date. A failed notebook leaves no target behind.
NOTEBOOKS := $(sort $(wildcard $(ROOT)/notebooks/[0-9][0-9]_*.ipynb))

define dataset_rules
OUT_$(1) := $(ROOT)/paper_figures/$(1)/$(PROFILE)
EXEC_$(1) := $$(patsubst $(ROOT)/notebooks/%,$$(OUT_$(1))/notebooks/%,$(NOTEBOOKS))
reproduce-$(1): $$(EXEC_$(1))
	$(VENV)/bin/flownar provenance --dataset $(1) --profile $(PROFILE) --seed $(SEED) \
	  $(if $(DATA_ROOT),--data "$(DATA_ROOT)") --out $$(OUT_$(1))
	@echo "reproduce-$(1): outputs in $$(OUT_$(1))"
endef
$(foreach d,ek100 ego4d egoexo4d,$(eval $(call dataset_rules,$(d))))

# one rule per (dataset, notebook): depends on the previous executed notebook of the same dataset
define notebook_rule
$(ROOT)/paper_figures/$(1)/$(PROFILE)/notebooks/$(notdir $(2)): $(2) $(3) $(STAMP) $(LIB)
	@mkdir -p $$(@D)
	cd $(ROOT) && $(VENV)/bin/papermill -k python3 --cwd $(ROOT)/notebooks $(2) $$@.tmp.ipynb \
	  -p dataset $(1) -p profile $(PROFILE) -p seed $(SEED) -p data_root "$(DATA_ROOT)" \
	  -p output_dir $(ROOT)/paper_figures/$(1)/$(PROFILE) \
	  $(if $(filter 01_%,$(notdir $(2))),-p llm_path "$(LLM_PATH)")
	@mv $$@.tmp.ipynb $$@
endef
prev_of = $(if $(filter 1,$(2)),,$(ROOT)/paper_figures/$(1)/$(PROFILE)/notebooks/$(notdir $(word $(shell echo $$(($(2)-1))),$(NOTEBOOKS))))
$(foreach d,ek100 ego4d egoexo4d,$(foreach i,$(shell seq 1 $(words $(NOTEBOOKS))),\
  $(eval $(call notebook_rule,$(d),$(word $(i),$(NOTEBOOKS)),$(call prev_of,$(d),$(i))))))

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

# On a machine with a CUDA GPU: the paper's sizes in bf16 (10^4 frames; 10^5 for the DCM systems).
bench-gpu: $(STAMP)
	for cfg in llama-3.2-1b llama-3.1-8b; do \
	  $(VENV)/bin/flownar bench --systems $(BENCH_SYSTEMS) --frames 10000 --long-frames 100000 --config $$cfg \
	    --device cuda --json $(BENCH_DIR)/bench_cuda_$$cfg.json || exit 1; done

# ---------------------------------------------------------------- cleaning
clean:
	rm -rf $(ROOT)/data $(ROOT)/runs $(ROOT)/paper_figures/*/smoke $(ROOT)/.pytest_cache
	find $(ROOT) -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(ROOT)/*.egg-info
