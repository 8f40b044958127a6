# Two commands do all the set-up on a fresh machine:
#   make demo   # build/refresh .venv, install, run the router + evaluation on the embedded tiny models
#   make test   # build/refresh .venv, install with test extras, lint, the browser (if missing), the test suite
# torch is pinned: on a CPU machine any other request pulls a multi-GB CUDA build.
# Every other version comes from requirements/lock.txt (uv pip compile; `make lock` refreshes it), so a
# fresh clone next month installs what CI tested today.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
EXTRAS ?= dev,triton,deepspeed
DEMO_EXTRAS ?= dev
comma := ,
# One stamp per extras set, its name spelling them: installing one set never marks another as done
# (make demo installs only DEMO_EXTRAS; make test after it must still install triton and deepspeed).
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
DEMO_STAMP := $(VENV)/.installed-$(subst $(comma),-,$(DEMO_EXTRAS))
DEMO_DIR ?= runs/demo
LOCK ?= requirements/lock.txt

.PHONY: install demo test test-slow test-lowest test-newest lock lint browser clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Reinstall when the metadata or the lock changes (the stamp is older than one of them). The lock is a
# constraints file: it fixes the version of whatever the extras pull in, and installs nothing else.
$(VENV)/.installed-%: pyproject.toml setup.py $(LOCK) | $(PY)
	$(PIP) install -q -c $(LOCK) $(TORCH_PIN)
	DS_BUILD_OPS=0 $(PIP) install -q -c $(LOCK) -e ".[$(subst -,$(comma),$*)]"
	touch $@

# Refresh the lock to today's releases: one universal resolution (Python >= 3.10, every platform) of the
# project and the extras CI installs, torch held at its pin. Commit the result once `make test` passes.
UV_PIN ?= uv==0.13.9
LOCK_EXTRAS ?= dev triton deepspeed
lock: | $(PY)
	$(PIP) install -q "$(UV_PIN)"
	printf '%s\n' "$(TORCH_PIN)" > $(VENV)/torch-pin.txt
	$(VENV)/bin/uv pip compile pyproject.toml $(addprefix --extra ,$(LOCK_EXTRAS)) --universal \
		--python-version 3.10 -c $(VENV)/torch-pin.txt --upgrade --custom-compile-command "make lock" -o $(LOCK)

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(PY) route.py --tau 2 --calibrate --target-acc target-0.005 --confidence 0.95 --measure-target-only --out $(DEMO_DIR)/routes.jsonl
	$(PY) eval.py --bench demo --out-dir $(DEMO_DIR)/report --no-resume
	@echo "browse the report (offline, any browser): $(DEMO_DIR)/report/report.html"

test: lint browser $(STAMP)
	$(PY) -m pytest -q -m "not slow" --doctest-modules prp tests
	$(PY) -m pytest -q -p no:cacheprovider $(COMPILED_TESTS)

# The slow tier: every training mode end to end, 2-process DeepSpeed ZeRO-3, kill-and-resume, the
# served router under hostile requests, a full torch.compile (CI runs it after the default suite).
test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m slow --durations=10 tests

# The dynamo-traced engine step under a light backend and its compile count (slow-marked, ~25 s of
# tracing): run by name after the suite, here and under the lowest transformers (test-lowest).
COMPILED_TESTS := tests/test_engine.py::test_compiled_step_equals_eager_loop \
	tests/test_engine.py::test_batch_size_sequence_compiles_a_bounded_number_of_graphs

# Debian's Chromium for the report.html browser test, installed only when missing (needs root).
browser:
	bash scripts/install_browser.sh

# The lowest transformers release pyproject.toml admits (its cache argument is `past_key_values=`, not
# `cache=`): the generation and router tests run under it too, in a second venv kept between runs.
LOWEST_TRANSFORMERS ?= transformers==5.17.0
LOWEST_VENV ?= .venv-lowest
LOWEST_PY := $(LOWEST_VENV)/bin/python
LOWEST_STAMP := $(LOWEST_VENV)/.installed-$(subst =,-,$(LOWEST_TRANSFORMERS))
LOWEST_TESTS ?= tests/test_engine.py tests/test_route.py

$(LOWEST_STAMP): pyproject.toml setup.py
	test -x $(LOWEST_PY) || { $(PYTHON) -m venv $(LOWEST_VENV) && $(LOWEST_PY) -m pip install -q --upgrade pip; }
	$(LOWEST_PY) -m pip install -q $(TORCH_PIN)
	$(LOWEST_PY) -m pip install -q "$(LOWEST_TRANSFORMERS)" -e ".[dev]"
	touch $@

test-lowest: $(LOWEST_STAMP)
	$(LOWEST_PY) -m pytest -q -p no:cacheprovider -m "not slow" $(LOWEST_TESTS)
	$(LOWEST_PY) -m pytest -q -p no:cacheprovider $(COMPILED_TESTS)

# Today's releases of every dependency (no lock, torch at its pin, Hugging Face's kernels present) in a
# cached venv refreshed each run: the default suite and one short route; a break names the package.
test-newest:
	TORCH_PIN="$(TORCH_PIN)" $(PYTHON) scripts/ci_newest.py --venv .venv-newest --lock $(LOCK)

# ruff's rules and line length: pyproject.toml [tool.ruff]; the same check runs as a pre-commit hook
LINT_PATHS ?= prp tests kernels benchmarks scripts train.py route.py eval.py
lint: $(STAMP)
	$(PY) -m ruff check $(LINT_PATHS)

clean:
	rm -rf $(VENV) $(LOWEST_VENV) .venv-newest runs .pytest_cache
