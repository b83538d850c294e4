# `make demo`: set up .venv and run task i, the tag-free semi arm and task ii end to end on the synthetic aerial dataset.
# `make test`: set up .venv and run the test suite (real-data tests need WSSEG_SHARED=../shared).
# `make bench`: speed and memory benchmarks → benchmarks/results/*.json (PUBLISHED=DIR: also time
# the training step of a visinf/1-stage-wseg checkout beside wsseg's; SKIP_DEMO=1: without the ~12-min timing of
# make demo from a fresh clone); `benchmarks/table.py` tabulates them.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python run_training.py --task all --config configs/demo.yaml --out $(RUN)
	@echo; cat $(RUN)/comparison.md; echo; echo "Full reports: $(RUN)/comparison.md, $(RUN)/task_i/report.md, $(RUN)/task_ii/report.md"

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(if $(PUBLISHED),--published $(PUBLISHED)) $(if $(SKIP_DEMO),--skip-demo)

clean:
	rm -rf $(VENV) runs .pytest_cache
