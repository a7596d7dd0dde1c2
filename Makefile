# dmlbench: `make all` sets up and reruns the study; `make test` runs the tests.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The stamp records a finished install of the pinned stack; it is remade only when pyproject.toml
# changes (or the venv is removed), so the 4-minute torch install happens once.
STAMP := $(VENV)/.dmlbench-installed
STUDY ?= studies/default.yaml
# Where runs, tables, figures and the report go: by default the study's own folder, results/ for the
# default study and results/<its name>/ for any other (dmlbench/paths.py decides); RESULTS=DIR names
# another. A study reuses the finished runs and searches of the shipped folders; `make all
# RESULTS=/some/empty/dir REUSE=none` reruns the whole study from scratch without touching them.
ifneq ($(RESULTS),)
export DMLBENCH_RESULTS := $(abspath $(RESULTS))
endif
ifneq ($(REUSE),)
export DMLBENCH_REUSE := $(REUSE)
endif
# The generated makefile of this study and results folder: one per pair, so two makes of different
# studies (or of one study into two results folders) in one checkout never read each other's cells.
STUDY_KEY := $(shell printf '%s\n%s' "$(abspath $(STUDY))" "$(DMLBENCH_RESULTS)" | sha256sum | cut -c1-12)
CELLS_MK := build/$(basename $(notdir $(STUDY)))-$(STUDY_KEY)/cells.mk
# Cells run JOBS at a time (default: one per core; one with a GPU), each on cores/JOBS threads: much of a cell is
# single-threaded (kernel start, plotting, t-SNE), so this beats one cell on all cores. A run records
# its thread count; the same seed gives the same numbers for the same thread count.
NPROC := $(shell nproc 2>/dev/null || echo 1)
# With a GPU, one cell at a time: it has the GPU and every core (its image loader workers use them).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
JOBS ?= $(if $(HAS_GPU),1,$(NPROC))
CELL_THREADS := $(shell echo $$(( $(NPROC) / $(JOBS) > 0 ? $(NPROC) / $(JOBS) : 1 )))
# Where the cells run (dmlbench/study/executors.py): local runs them here through the generated makefile;
# submitit-local runs each as a submitit job on this machine, JOBS at a time; slurm submits them as
# one Slurm job array with the study file's `slurm:` settings and waits for it. Either way each cell
# is the same notebook execution writing the same files, and the report is built here afterwards.
EXECUTOR ?= local
# On Slurm, JOBS (cells running at once) is passed only when given (`make all EXECUTOR=slurm JOBS=8`):
# this machine's core count says nothing of the cluster, so the study's array_parallelism decides.
EXECUTOR_JOBS := $(if $(and $(filter slurm,$(EXECUTOR)),$(filter file,$(origin JOBS))),,--jobs $(JOBS))
# pip's machine-wide configuration here lists local indexes that do not exist; their warnings are noise.
PIP_QUIET := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: all setup data browser pretrain study report cells indexes cells-makefile test readme list clean distclean lock \
	gpu-prepare gpu-dry gpu-check gpu-results

all: report

setup: $(STAMP)

$(STAMP): pyproject.toml
	@if [ ! -x $(PY) ]; then echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); fi
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]' 2>&1 | { $(PIP_QUIET); }
	$(PY) -c "import dmlbench, torch, torchvision, timm, papermill, faiss, pytorch_metric_learning"
	touch $@

# The study's datasets. Fashion-MNIST: found through $$DMLBENCH_DATA or Debian's package, installed
# with apt-get when we are root and the files are absent. The benchmarks (cub, cars196, sop, inshop):
# found through their data_root or $$DMLBENCH_DATA, else downloaded where the network allows; their
# images are decoded once into the cache (see 'dmlbench data prepare').
data: $(STAMP)
	@if $(PY) -m dmlbench study $(STUDY) --datasets | grep -qx fashion-mnist \
	    && ! DMLBENCH_DOWNLOAD=0 $(PY) -m dmlbench data locate fashion-mnist >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's dataset-fashion-mnist"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  fi; \
	fi
	@if $(PY) -m dmlbench study $(STUDY) --datasets | grep -qx han-typefaces; then \
	  missing="$$($(PY) -c 'from dmlbench.datasets.typefaces import missing_packages; print(*missing_packages())')"; \
	  if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing the CJK font packages of han-typefaces: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	fi
	$(PY) -m dmlbench study $(STUDY) --prepare-data

# Headless Chromium (Debian's chromium): the report's screenshot and the test that opens the report
# in a real browser. Installed with apt-get when we are root and no Chromium is found.
browser:
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "no chromium: install Debian's chromium package (the browser test needs it)"; fi; \
	fi

# One make target per cell (results/runs/<run id>/metrics.json), generated from the study file, so
# finished cells are skipped and `make -j N all` runs N cells at once.
$(CELLS_MK): FORCE $(STAMP) pretrain
	@mkdir -p $(dir $@)
	$(PY) -m dmlbench study $(STUDY) --emit-make $@

# Writes the study's generated makefile and prints its path.
cells-makefile: $(CELLS_MK)
	@echo $(CELLS_MK)

# The pretrained glyph backbones a study's cells fine-tune (studies/transfer.yaml; dmlbench/training/pretrain.py):
# each fold's, pretrained on its pretraining pool unless the shipped pretrained/han-typefaces/foldK.pt is current
# (same recipe, same pool); nothing for a study that uses no pretrained network. `dmlbench pretrain --verify`
# retrains and compares with the shipped weights.
pretrain: data
	$(PY) -m dmlbench pretrain --study $(STUDY)

cells: data pretrain $(CELLS_MK)
ifeq ($(EXECUTOR),local)
	OMP_NUM_THREADS=$(CELL_THREADS) $(MAKE) --no-print-directory $(if $(findstring jobserver,$(MAKEFLAGS)),,-j$(JOBS)) -f $(CELLS_MK) cells
else ifeq ($(EXECUTOR),slurm)
	$(PY) -m dmlbench study $(STUDY) --executor slurm $(EXECUTOR_JOBS) --no-report
else
	OMP_NUM_THREADS=$(CELL_THREADS) $(PY) -m dmlbench study $(STUDY) --executor $(EXECUTOR) $(EXECUTOR_JOBS) --no-report
endif

study: cells

# A study with an indexes: block (studies/default.yaml has one): every finished run's embeddings served by
# similarity-search indexes (docs/indexes.md); the report depends on it, after every cell has finished.
indexes: cells
	$(PY) -m dmlbench indexes --study $(STUDY)

# Executed notebooks with indexed-colour figures (dmlbench/study/footprint.py): runs compact their own
# when they finish; this compacts any older ones, and leaves compact ones byte for byte.
report: cells browser
	$(PY) -m dmlbench bench footprint --compact
	$(MAKE) --no-print-directory -f $(CELLS_MK) report

# The record of each component's code (dmlbench/sources.lock.json): run after bumping a component's
# version; FORCE=1 records a change that alters no number (a refactor) under the same version.
lock: $(STAMP)
	$(PY) -c 'from dmlbench.config import write_source_lock; write_source_lock(force="$(FORCE)" == "1")'

# The tests run on one pytest-xdist worker per core, each on one thread; a file's tests stay on one worker
# (tests/conftest.py sets the threads and starts the workers on the longest files).
test: $(STAMP) data browser
	$(PY) -m pytest -q -n logical --dist loadfile --no-loadscope-reorder

readme: $(STAMP)
	$(PY) -m dmlbench readme

list: $(STAMP)
	$(PY) -m dmlbench list

# The prepared GPU check (dmlbench/bench/gpucheck.py). Here: gpu-prepare downloads the Python 3.12
# wheels and bundles the data under build/gpu/ and prints the device calls; gpu-dry does everything
# that needs no GPU. On the GPU machine (its own python3, torch preinstalled, no venv, no network):
# gpu-check runs the check, both parts or PART=1 / PART=2. Back here: gpu-results FROM=<folder>.
GPU_PYTHON ?= python3
gpu-prepare: $(STAMP) data
	$(PY) -m dmlbench.bench.gpucheck prepare

gpu-dry: $(STAMP) data
	$(PY) -m dmlbench.bench.gpucheck dry

gpu-check:
	$(GPU_PYTHON) -m dmlbench.bench.gpucheck run $(if $(PART),--part $(PART),)

gpu-results: $(STAMP)
	@test -n "$(FROM)" || { echo "make gpu-results FROM=<the folder the GPU machine's files came back to>"; exit 2; }
	$(PY) -m dmlbench.bench.gpucheck collect $(FROM)

# Never deletes results: finished runs are the study's data.
clean:
	rm -rf build .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

FORCE:
