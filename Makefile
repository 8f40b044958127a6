# Two commands do all the set-up on a fresh machine:
#   make demo   # build/refresh .venv, install, run the router + evaluation on the embedded tiny models
#   make test   # build/refresh .venv, install with test extras, run the test suite
# torch is pinned: on a CPU machine any other request pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
EXTRAS ?= dev,triton,deepspeed
STAMP := $(VENV)/.installed-$(shell echo "$(EXTRAS)" | tr ',' '-')
DEMO_DIR ?= runs/demo

.PHONY: install demo test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Reinstall when setup.py changes (the stamp is older than it).
$(STAMP): setup.py | $(PY)
	$(PIP) install -q $(TORCH_PIN)
	DS_BUILD_OPS=0 $(PIP) install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

demo: EXTRAS = dev
demo: $(STAMP)
	$(PY) route.py --tau 2 --pt 0.6 --out $(DEMO_DIR)/routes.jsonl
	$(PY) eval.py --bench demo --out-dir $(DEMO_DIR)/report

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --doctest-modules prp tests

lint: $(STAMP)
	$(PY) -m ruff check prp tests kernels train.py route.py eval.py

clean:
	rm -rf $(VENV) runs .pytest_cache
