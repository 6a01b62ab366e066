# reasondiff — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXP ?= tiny
ARGS ?=
# The GPU path of the paper's run; override e.g. `make reproduce HW=t4_16gb`
HW ?= rtx5070ti_16gb
# The offline Qwen2.5-0.5B-architecture checkpoint (built by ../shared/tools/offline_qwen.sh)
QWEN ?= /work/qwen05b
# The other seeds of `make demo-null`'s ensembles (the main runs are seed 0)
NULL_SEEDS ?= 1,2

.DEFAULT_GOAL := help
.PHONY: help setup test test-full lint demo reproduce experiment-cpu experiment-cpu-v1 finetune bench harvest scan train analyze intervene pipeline \
        sweep-l1 sweep-k sweep-limits sweep-layers sweep-summary bench-all demo-numbers demo-null tiny-base clean clean-tiny

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

setup: ## create .venv and install the project (CPU torch 2.13.0 wheel when no NVIDIA GPU is present)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  $(PY) -m pip install -q torch; else $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e ".[dev]"

test: ## the test suite without slow real-model tests (what CI runs)
	$(PY) -m pytest -q

test-full: ## every test, including slow ones that need the offline Qwen model (REASONDIFF_QWEN=/dir)
	$(PY) -m pytest -q -m "slow or not slow"

lint: ## ruff
	$(VENV)/bin/ruff check reasondiff tests benchmarks

demo: ## the whole pipeline offline on CPU with the embedded tiny model (+exp=tiny), a few minutes
	$(PY) -m reasondiff.pipeline +exp=tiny $(ARGS)

demo-null: ## the tiny demo against its nulls: seeds 0-2 of the reasoning, base-vs-base and control pairs; report leads with the calibrated table (docs/null.md)
	$(PY) -m reasondiff.pipeline +exp=tiny $(ARGS)
	$(PY) -m reasondiff.train -m +exp=tiny seed=$(NULL_SEEDS) $(ARGS)
	$(PY) -m reasondiff.harvest +exp=tiny +null=base_vs_base $(ARGS)
	$(PY) -m reasondiff.train +exp=tiny +null=base_vs_base $(ARGS)
	$(PY) -m reasondiff.train -m +exp=tiny +null=base_vs_base seed=$(NULL_SEEDS) $(ARGS)
	$(PY) -m reasondiff.finetune +exp=tiny +null=control $(ARGS)
	$(PY) -m reasondiff.harvest +exp=tiny +null=control $(ARGS)
	$(PY) -m reasondiff.train +exp=tiny +null=control $(ARGS)
	$(PY) -m reasondiff.train -m +exp=tiny +null=control seed=$(NULL_SEEDS) $(ARGS)
	$(PY) -m reasondiff.analyze +exp=tiny +null=base_vs_base $(ARGS)
	$(PY) -m reasondiff.analyze +exp=tiny +null=control $(ARGS)
	$(PY) -m reasondiff.analyze +exp=tiny $(ARGS)

demo-numbers: ## rewrite the README's demo numbers from outputs/tiny (WALL=seconds MACHINE="..." as measured)
	$(PY) -m reasondiff.tiny.demo_numbers outputs/tiny --readme README.md $(if $(WALL),--wall $(WALL)) $(if $(MACHINE),--machine "$(MACHINE)")

reproduce: ## the paper's run: the five stages with +exp=qwen05b on a GPU (HW=rtx5070ti_16gb|t4_16gb)
	$(PY) -m reasondiff.pipeline +exp=qwen05b hardware=$(HW) $(ARGS)

experiment-cpu: ## experiments/qwen05b_cpu_v2: the six stages on the offline Qwen on CPU + a crosscoder with designated shared latents, tables and figures collected next to its README
	[ -f $(QWEN)/config.json ] || PYTHON=$(PY) ../shared/tools/offline_qwen.sh $(QWEN)
	$(PY) -m reasondiff.pipeline +exp=qwen05b_cpu_v2 model.path=$(QWEN) $(ARGS)
	$(PY) -m reasondiff.bench +exp=qwen05b_cpu_v2 model.path=$(QWEN) run=n50 'bench.tasks=[math500,boolq]' bench.limit=50 $(ARGS)
	$(PY) -m reasondiff.train +exp=qwen05b_cpu_v2 model.path=$(QWEN) run=shared train.shared_latents=0.05 $(ARGS)
	$(PY) -m reasondiff.analyze +exp=qwen05b_cpu_v2 model.path=$(QWEN) run=shared analyze.n_heldout_contexts=12 analyze.n_reasoning_contexts=12 $(ARGS)
	$(PY) experiments/qwen05b_cpu_v2/collect.py outputs/qwen05b_cpu_v2

experiment-cpu-v1: ## experiments/qwen05b_cpu: the first edition (lr 1e-4, bf16, n = 30), as it was run
	[ -f $(QWEN)/config.json ] || PYTHON=$(PY) ../shared/tools/offline_qwen.sh $(QWEN)
	$(PY) -m reasondiff.pipeline +exp=qwen05b_cpu model.path=$(QWEN) $(ARGS)
	$(PY) experiments/qwen05b_cpu/collect.py outputs/qwen05b_cpu

pipeline: ## all stages for EXP (default tiny), skipping finished ones
	$(PY) -m reasondiff.pipeline +exp=$(EXP) $(ARGS)

finetune: ## stage 1: SFT on s1K-1.1 (EXP=qwen05b ARGS="...")
	$(PY) -m reasondiff.finetune +exp=$(EXP) $(ARGS)

bench: ## stage 2: token-budget sweeps on gsm8k / MATH-500 / boolq
	$(PY) -m reasondiff.bench +exp=$(EXP) $(ARGS)

harvest: ## stage 3: paired residual activations
	$(PY) -m reasondiff.harvest +exp=$(EXP) $(ARGS)

scan: ## which layer did the fine-tune change? per-layer representation change + activation patching, recommended hook
	$(PY) -m reasondiff.scan +exp=$(EXP) $(ARGS)

train: ## stage 4: sparse crosscoder
	$(PY) -m reasondiff.train +exp=$(EXP) $(ARGS)

analyze: ## stage 5: CE recovery, decoder geometry, latents, report.md
	$(PY) -m reasondiff.analyze +exp=$(EXP) $(ARGS)

intervene: ## after analyze: patch / ablate / steer latent sets vs random sets, the ADL baseline, budget sweeps of intervened models
	$(PY) -m reasondiff.intervene +exp=$(EXP) $(ARGS)

sweep-l1: ## multirun over train.l1_coeff (conf/sweep/l1_coeff.yaml)
	$(PY) -m reasondiff.train -m +exp=$(EXP) +sweep=l1_coeff $(ARGS)

sweep-k: ## multirun over batchtopk k (conf/sweep/k.yaml)
	$(PY) -m reasondiff.train -m +exp=$(EXP) +sweep=k $(ARGS)

sweep-limits: ## multirun over token-limit grids (conf/sweep/token_limits.yaml)
	$(PY) -m reasondiff.bench -m +exp=$(EXP) +sweep=token_limits $(ARGS)

sweep-layers: ## multirun harvest over layers (conf/sweep/layers.yaml)
	$(PY) -m reasondiff.harvest -m +exp=$(EXP) +sweep=layers $(ARGS)

sweep-summary: ## L0 vs FVU and CE recovered over the train runs of EXP (outputs/EXP/sweep_summary.csv + .png)
	$(PY) -m reasondiff.train.sweep_summary outputs/$(EXP)

bench-all: ## speed benchmarks on the offline Qwen model (QWEN=/dir built by ../shared/tools/offline_qwen.sh)
	for b in benchmarks/*.py; do $(PY) $$b --model $(QWEN) || exit 1; done

clean: ## remove outputs of EXP (default tiny), keeping the cached tiny base model
	rm -rf outputs/$(EXP)

tiny-base: ## rebuild the tiny base model shipped in reasondiff/tiny/base_model/ from TinyRecipe (~20 min on 2 CPU cores)
	$(PY) -m reasondiff.tiny.build

clean-tiny: ## also remove the cached tiny base model and data (the shipped build is copied back in a second)
	rm -rf outputs/_tiny
