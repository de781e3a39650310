# The two commands a new user needs: `make demo` and `make test`. Everything else is for developers.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On CPU machines this takes the CPU wheel of torch that pip finds locally; on GPU nodes PyPI's CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench lint lock clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	@echo "== fabric doctor: the embedded stack this demo runs on"
	$(BIN)/fabric doctor
	@echo "== fabric run smoke: Ray Data + Ray Train (2 workers) on scikit-learn data, logged to MLflow"
	$(BIN)/fabric run smoke --config configs/smoke.yaml
	@echo "== done: trained and scored a model with Ray Train, logged config, metrics and checkpoint to MLflow."
	@echo "   Browse the run: $(BIN)/mlflow ui --backend-store-uri sqlite:///$$(pwd)/.fabric/mlflow/mlflow.db"

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check fabric workloads llm rag tests bench

lock: $(STAMP)
	(echo "# Exact versions that CI and \`make\` install (pip constraints). Regenerate with \`make lock\`."; \
	 $(BIN)/python -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/' | sort -f) > constraints.txt

clean:
	rm -rf $(VENV) .fabric .pytest_cache .ruff_cache
