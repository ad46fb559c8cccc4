# Two commands do all set-up: `make run` (the default pipeline) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# On the development machines torch comes from a local CPU build; elsewhere pip resolves it normally.
TORCH_SPEC ?= torch==2.13.0
export PATH := $(abspath $(BIN)):$(PATH)
# Keep freed memory instead of returning it to the kernel after every large tensor (see DESIGN.md).
export GLIBC_TUNABLES ?= glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
# libgomp's idle threads spin by default; on a shared machine that holds the core the working thread needs and
# made CPU training steps ~10x slower (benchmarks/README.md). Sleeping idle threads cost little when it is quiet.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install install-test run test lint train-real clean

# The real-data profile: `make train-real DATA=../shared/data/cuhk-dbd [LAYOUT=cuhk|dut|szu|folder]
# [POLARITY=blurred-white|sharp-white] [PRETRAIN=1] [EXTRA="--set key=value ..."]`. Outputs go under runs/real/ (runs/real-pretrained/), models to the MLflow registry.
DATA ?= ../shared/data/cuhk-dbd
LAYOUT ?= cuhk
POLARITY ?=
PROFILE ?= profiles/cuhk-cpu.yaml
PRETRAIN ?= 0
REAL_ARGS = --params params.yaml --params $(PROFILE) --set data.source=$(LAYOUT) --set data.input=$(abspath $(DATA)) \
	$(if $(POLARITY),--set data.polarity=$(POLARITY)) \
	$(if $(filter 1,$(PRETRAIN)),--params profiles/cuhk-cpu-pretrained.yaml) $(EXTRA)
PRETRAIN_ARGS = --params params.yaml --params profiles/synthetic-pretrain.yaml

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" || $(BIN)/pip install --quiet torch
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	$(BIN)/dvc repro
	@$(BIN)/dbdgan results

train-real: install
	@test -d "$(DATA)" || { echo "DATA=$(DATA) is not a folder"; exit 2; }
ifeq ($(PRETRAIN),1)
	$(BIN)/dbdgan prepare $(PRETRAIN_ARGS)
	$(BIN)/dbdgan train-teacher $(PRETRAIN_ARGS)
	$(BIN)/dbdgan distill-student $(PRETRAIN_ARGS)
endif
	$(BIN)/dbdgan prepare $(REAL_ARGS)
	$(BIN)/dbdgan validate $(REAL_ARGS)
	$(BIN)/dbdgan train-teacher $(REAL_ARGS)
	$(BIN)/dbdgan distill-student $(REAL_ARGS)
	$(BIN)/dbdgan evaluate $(REAL_ARGS)
	$(BIN)/dbdgan register $(REAL_ARGS)
	@$(BIN)/dbdgan results $(REAL_ARGS)

test: install-test
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

lint: install-test
	$(BIN)/ruff check .

clean:
	rm -rf data/prepared reports metrics models checkpoints mlflow/mlflow.db mlflow/artifacts
