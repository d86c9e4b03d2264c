# One command per job. `make setup` is implied by the others.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 resolves to the CPU wheel on our machines; on a GPU box pick your build, e.g.
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
GLUE_DIR ?= ../shared/data/glue
SQUAD_DIR ?= ../shared/data/squad
RESULTS ?= results/raw
OUT ?= results/tables
# LaTeX tables: (ours - paper) below each cell (delta), a paper column (column) or ours only (none)
PAPER ?= delta
DEMO_STEPS ?= 50
# one intra-op thread: on our 2-core VMs a MiniLM step is about 5x slower with two
DEMO_THREADS ?= 1

.PHONY: setup test test-fast demo mini mini-extended mini-fair mini-squad tables bench gpu-check clean-results

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# the whole test suite (CPU, offline, < 15 minutes on 2 cores)
test: setup
	$(PY) -m pytest -q -n 2

test-fast: setup
	$(PY) -m pytest -q -n 2 -m "not slow"

# a real job offline that visibly learns: MiniLM + TriAdaptLoRA on real STS-B (local copy when
# present, else the hub), Table V's schedule scaled to DEMO_STEPS steps; prints the trivial baseline
demo: setup
	$(if $(wildcard $(GLUE_DIR)),HF_HUB_OFFLINE=1,) $(PY) train.py task=stsb method=triadapt threshold=linear model=minilm \
	  $(if $(wildcard $(GLUE_DIR)),data.dir=$(GLUE_DIR),) train.schedule=scaled \
	  task.max_seq_length=64 train.num_threads=$(DEMO_THREADS) train.max_steps=$(DEMO_STEPS) results.root=results/demo

# the mini reproduction of Table I on CPU (docs/mini-reproduction.md): MiniLM on real MRPC and STS-B,
# every arm x 3 seeds, two one-thread jobs at a time; resumable (finished runs are skipped)
mini: setup
	HF_HUB_OFFLINE=1 $(PY) train.py -m +sweep=mini results.root=results/mini/raw data.dir=$(GLUE_DIR) \
	  hydra/launcher=joblib hydra.launcher.n_jobs=2
	$(PY) scripts/make_tables.py --results results/mini/raw --out results/mini/tables

# the fair protocol's mini reproduction on CPU (docs/fair-protocol.md): MiniLM on real MRPC and STS-B,
# 5 arms; LR search (seed 0) -> LRs selected on validation -> 5 seeds at them, plus the paper-protocol
# counterpart (3 seeds); two one-thread jobs at a time; every stage resumable (finished runs are skipped)
# (MINI_FAIR_ARGS: extra overrides for every stage, e.g. a slice "+sweep/arm=lora +sweep/mini_fair_task=stsb")
MINI_FAIR ?= results/mini_fair
MINI_FAIR_ARGS ?=
MINI_FAIR_RUN = HF_HUB_OFFLINE=1 $(PY) train.py -m results.root=$(MINI_FAIR)/raw data.dir=$(GLUE_DIR) \
	  hydra/launcher=joblib hydra.launcher.n_jobs=2 $(MINI_FAIR_ARGS)
mini-fair: setup
	$(MINI_FAIR_RUN) +sweep=mini_fair_search
	@# widen the grid past every selected LR that is the lowest or highest searched, two runs at a
	@# time, until each is inside its grid (select_lr --edge-runs; docs/fair-protocol.md)
	round=0; while { $(PY) -m adarank.analysis.select_lr $(MINI_FAIR)/raw --edge-runs \
	    > $(MINI_FAIR)/edge_runs.txt || exit 1; } && test -s $(MINI_FAIR)/edge_runs.txt; do \
	  round=$$((round + 1)); test $$round -le 8 || { echo "mini-fair: edges left after 8 rounds" >&2; exit 1; }; \
	  xargs -P 2 -L 1 sh -c 'HF_HUB_OFFLINE=1 $(PY) train.py -m +sweep=mini_fair_search results.root=$(MINI_FAIR)/raw \
	    data.dir=$(GLUE_DIR) +sweep/mini_fair_task=$$0 +sweep/arm=$$1 protocol.lr_scale=$$2 \
	    hydra.sweep.dir=$(MINI_FAIR)/hydra/edge/$$0-$$1-$$2' < $(MINI_FAIR)/edge_runs.txt || exit 1; \
	done
	$(PY) -m adarank.analysis.select_lr $(MINI_FAIR)/raw --out $(MINI_FAIR)
	$(MINI_FAIR_RUN) +sweep=mini_fair protocol.lr_table=$(MINI_FAIR)/selected_lr.yaml
	$(MINI_FAIR_RUN) +sweep=mini_fair_paper
	$(PY) scripts/make_tables.py --results $(MINI_FAIR)/raw --out $(MINI_FAIR)/tables

# the issue-27 baselines (DoRA, rsLoRA, PiSSA, LoRA+, EVA, SoRA) on the mini setting, into the same results
# tree as `make mini`, so that the tables show them as extra rows (36 runs, docs/mini-reproduction.md)
mini-extended: setup
	HF_HUB_OFFLINE=1 $(PY) train.py -m +sweep=mini_extended results.root=results/mini/raw data.dir=$(GLUE_DIR) \
	  hydra/launcher=joblib hydra.launcher.n_jobs=2
	$(PY) scripts/make_tables.py --results results/mini/raw --out results/mini/tables

# the mini reproduction of Table IV on CPU (docs/mini-reproduction.md, SQuAD 2.0): MiniLM on real
# SQuAD 2.0 questions, 7 arms x 3 seeds, two one-thread jobs at a time; resumable
mini-squad: setup
	HF_HUB_OFFLINE=1 $(PY) train.py -m +sweep=mini_squad results.root=results/mini_squad/raw data.dir=$(SQUAD_DIR) \
	  hydra/launcher=joblib hydra.launcher.n_jobs=2
	$(PY) scripts/make_tables.py --results results/mini_squad/raw --out results/mini_squad/tables

# Tables I-IV, Figures 2-5 and the cost table from a results tree; `make setup` only when $(PY)
# cannot import adarank yet (make tables PY=/path/to/python uses that environment as it is)
tables:
	@$(PY) -c "import adarank" 2>/dev/null || $(MAKE) setup
	$(PY) scripts/make_tables.py --results $(RESULTS) --out $(OUT) --paper $(PAPER) $(if $(SETUP),--setup "$(SETUP)")

# side-by-side speed/memory of every method (see docs/performance.md)
bench: setup
	$(PY) scripts/bench.py
	$(PY) -m adarank.tools.checkpoint_cost

# on a GPU machine (<= 10 min on one A100/H100/H200; never part of the tests): CUDA vs CPU and bf16 for
# every method, host-device syncs per step on CUDA, step time and fraction of the bf16 peak at
# DeBERTaV3-base dimensions (docs/performance.md "GPU check"); report in results/gpu_check/
gpu-check: setup
	HF_HUB_OFFLINE=1 $(PY) -m adarank.tools.gpu_check --out results/gpu_check

clean-results:
	rm -rf results/raw results/tables results/demo results/mini results/mini_fair results/mini_squad
