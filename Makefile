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

.PHONY: install install-test run test test-fast lint train-real clean image image-test serve

# The real-data profile: `make train-real DATA=../shared/data/cuhk-dbd [LAYOUT=cuhk|dut|szu|folder]
# [POLARITY=blurred-white|sharp-white] [PRETRAIN=1] [RUNS=runs] [EXTRA="--set key=value ..."]
# [EXTRA_EVAL="LABEL=[LAYOUT:[POLARITY:]]PATH ..."]`. Outputs go under $(RUNS)/real/ ($(RUNS)/real-finetuned/),
# models to the MLflow registry as dbd-{teacher,student}-cuhk.
# `dbdgan steps --dvc --root DIR` writes the step table (dbdgan.graph.STEPS) there as a DVC pipeline of its own
# (dvc.yaml, the merged params.yaml, inputs.yaml) and `dvc repro` runs it: a rerun reruns only what changed.
DATA ?= ../shared/data/cuhk-dbd
LAYOUT ?= cuhk
POLARITY ?=
# Datasets the evaluate step also scores whole, never trained on (their numbers under LABEL., tagged metric.LABEL.*
# on the registered versions): by default the SZU-BD sample of ../shared when it is there; EXTRA_EVAL= for none.
EXTRA_EVAL ?= $(if $(wildcard ../shared/data/szu-bd-sample/gt),szu=../shared/data/szu-bd-sample)
# ImageNet-pretrained networks by default; synthetic pre-training (PRETRAIN=1) is for the from-scratch ones
PROFILE ?= profiles/$(if $(filter 1,$(PRETRAIN)),cuhk-cpu-scratch,cuhk-cpu).yaml
PRETRAIN ?= 0
RUNS ?= runs
REAL_ROOT = $(RUNS)/$(if $(filter 1,$(PRETRAIN)),real-finetuned,real)
REAL_ARGS = --root $(REAL_ROOT) --input $(abspath $(DATA)) --params params.yaml --params $(PROFILE) \
	--set data.source=$(LAYOUT) $(if $(POLARITY),--set data.polarity=$(POLARITY)) \
	--experiment dbdgan-real --teacher-name dbd-teacher-cuhk --student-name dbd-student-cuhk \
	$(if $(filter 1,$(PRETRAIN)),--params profiles/cuhk-cpu-finetune.yaml --init-from $(RUNS)/pretrain) \
	$(foreach dataset,$(EXTRA_EVAL),--extra $(dataset)) $(EXTRA)
PRETRAIN_ARGS = --root $(RUNS)/pretrain --until distill_student --experiment dbdgan-pretrain \
	--params params.yaml --params profiles/synthetic-pretrain.yaml

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" || $(BIN)/pip install --quiet torch
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all,test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# `dvc repro` of a run folder's pipeline (its own DVC project, made on first use)
dvc_repro = test -d $(1)/.dvc || (cd $(1) && $(abspath $(BIN))/dvc init -q --no-scm); cd $(1) && $(abspath $(BIN))/dvc repro

run: install
	$(BIN)/dvc repro
	@$(BIN)/dbdgan results

train-real: install
	@test -d "$(DATA)" || { echo "DATA=$(DATA) is not a folder"; exit 2; }
ifeq ($(PRETRAIN),1)
	$(BIN)/dbdgan steps --dvc $(PRETRAIN_ARGS)
	$(call dvc_repro,$(RUNS)/pretrain)
endif
	$(BIN)/dbdgan steps --dvc $(REAL_ARGS)
	$(call dvc_repro,$(REAL_ROOT))
	@$(BIN)/dbdgan results --root $(REAL_ROOT)

test: install-test
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

# The edit-test loop: everything but the end-to-end and server tests (markers in pyproject.toml), in minutes.
test-fast: install-test
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not e2e and not server and not slow"

lint: install-test
	$(BIN)/ruff check .

# The component image (podman; offline Debian base when the public one cannot be pulled): tagged
# <version>-g<commit>[-dirty], the tag `dbdgan pipeline compile` names. IMAGE_REPO=registry.example.com/ml/dbdgan
# to push it (docs/kubernetes.md). image-test runs every step's component inside it (tests/test_image_run.py)
# and the serving container of deploy/ on the champion (tests/test_image_serve.py).
IMAGE_REPO ?= localhost/dbdgan
image: install
	DBDGAN_IMAGE_REPO=$(IMAGE_REPO) scripts/build-image.sh

image-test: install-test
	DBDGAN_IMAGE_REPO=$(IMAGE_REPO) DBDGAN_REQUIRE_IMAGE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_image_run.py tests/test_image_serve.py

# REST serving of a registered model with MLflow's scoring server (uvicorn from the venv, which PATH above puts
# first): `make serve [MODEL=models:/dbd-student@champion] [PORT=5001] [HOST=127.0.0.1]`, tracking from
# $$MLFLOW_TRACKING_URI, else the local store.
MODEL ?= models:/dbd-student@champion
PORT ?= 5001
HOST ?= 127.0.0.1
serve: install
	MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///mlflow/mlflow.db}" exec $(BIN)/mlflow models serve \
		-m "$(MODEL)" --env-manager local -h $(HOST) -p $(PORT)

clean:
	rm -rf data/prepared reports metrics models checkpoints mlflow/mlflow.db mlflow/artifacts
