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
DEMO_STEPS ?= 50
# one intra-op thread: on our 2-core VMs a MiniLM step is about 5x slower with two
DEMO_THREADS ?= 1

.PHONY: setup test test-fast demo mini mini-squad tables bench clean-results

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

# the mini reproduction of Table IV on CPU (docs/mini-reproduction.md, SQuAD 2.0): MiniLM on real
# SQuAD 2.0 questions, 7 arms x 3 seeds, two one-thread jobs at a time; resumable
mini-squad: setup
	HF_HUB_OFFLINE=1 $(PY) train.py -m +sweep=mini_squad results.root=results/mini_squad/raw data.dir=$(SQUAD_DIR) \
	  hydra/launcher=joblib hydra.launcher.n_jobs=2
	$(PY) scripts/make_tables.py --results results/mini_squad/raw --out results/mini_squad/tables

# Tables I-IV, Figures 2-5 and the cost table from a results tree
tables: setup
	$(PY) scripts/make_tables.py --results $(RESULTS) --out results/tables $(if $(SETUP),--setup "$(SETUP)")

# side-by-side speed/memory of every method (see docs/performance.md)
bench: setup
	$(PY) scripts/bench.py
	$(PY) -m adarank.checkpoint_cost

clean-results:
	rm -rf results/raw results/tables results/demo results/mini results/mini_squad
