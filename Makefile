# One-command entry points. Every target sets up the virtual environment first (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Telemetry off (pipeline/core/environment.py sets the same defaults for Python entry points).
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test data-extras flow serve ui report paper quickstart bench-loader bench-prepare profile-encoder claims

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

## Run the whole pipeline on the embedded photos (one grouped MLflow run), then print each stage's headline
## result next to its baseline (`dvc metrics show` has every number).
repro: setup data-extras
	$(BIN)/python -m pipeline.core.tracking dvc repro
	$(BIN)/python -m pipeline.orchestration.summary

## Run the test suite. One intra-op thread per process: the suite runs DataLoader workers and 2-process
## torchrun jobs side by side, which oversubscribe the cores with more (the stages use every core).
test: export OMP_NUM_THREADS ?= 1
test: setup
	$(BIN)/python -m pytest -q

## Debian's wallpaper photos enlarge the embedded dataset; best effort (needs root and apt-get).
data-extras:
	@if ls /usr/share/backgrounds/mate/nature/*.jpg >/dev/null 2>&1 && ls /usr/share/backgrounds/*_by_*.jpg >/dev/null 2>&1; then \
	  echo "Debian wallpaper photos present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lomiri-wallpapers-16.04 mate-backgrounds >/dev/null) \
	    || echo "note: could not install Debian wallpapers; using the package photos only"; \
	else \
	  echo "note: run 'sudo apt-get install lomiri-wallpapers-16.04 mate-backgrounds' for a larger embedded dataset"; \
	fi

## Run the Prefect flow once (ephemeral, no server needed).
flow: setup
	$(BIN)/python -m pipeline.orchestration.flow run

## Serve the Prefect flow on the cron schedule in params.yaml (starts prefect server on 127.0.0.1 unless a
## Prefect API URL is configured); Ctrl-C or SIGTERM stops both.
serve: setup
	$(BIN)/python -m pipeline.orchestration.flow serve

## Browse every run, metric and artefact at http://127.0.0.1:5000: the store MLFLOW_TRACKING_URI names when set
## (a tracking server's URL already serves this UI), else the project's mlflow.db.
MLFLOW_STORE = $(or $(MLFLOW_TRACKING_URI),sqlite:///$(CURDIR)/mlflow.db)
ui: setup
	@case "$(MLFLOW_STORE)" in \
	  http://*|https://*) echo "MLFLOW_TRACKING_URI is a tracking server: browse $(MLFLOW_STORE)";; \
	  *) $(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --workers 1 --backend-store-uri "$(MLFLOW_STORE)";; \
	esac

## Parameters, GFLOPs and latent shapes of every encoder preset and baseline.
report: setup
	$(BIN)/python scripts/model_report.py

## The paper's settings (profiles/paper.yaml) as a DVC experiment; meant for GPUs and your own images.
paper: setup
	overrides="$$($(BIN)/python -m pipeline.config.profiles profiles/paper.yaml)" && \
	  set -f && $(BIN)/dvc exp run -n paper $$overrides

## The paper's claims, measured: paired small-budget DVC experiments (profiles/claims.yaml: 10 experiments,
## ~50 min on 2 CPU cores), then reports/paper_claims.md with figures, all logged to MLflow under one parent run.
## On a GPU: make claims CLAIMS_PROFILE=profiles/claims_gpu.yaml
CLAIMS_PROFILE ?= profiles/claims.yaml
claims: setup
	$(BIN)/python -m pipeline.claims run --profile $(CLAIMS_PROFILE)

## Loader throughput next to what training consumes.
bench-loader: setup
	$(BIN)/python scripts/bench_loader.py

## Where SD-VAE's, LiteVAE-S's and LiteVAE-B's inference time goes, by op type (one worker thread, torch.profiler).
profile-encoder: setup
	$(BIN)/python scripts/profile_encoder.py --encoders sd_vae S B

## prepare's images/s and peak memory for 500 and 2,000 generated photos with 1 and 2 decoding workers (idle machine).
bench-prepare: setup
	$(BIN)/python scripts/bench_prepare.py
