# fewstep: `make demo` runs the main job, `make test` runs the test suite.
# Both build .venv on first use from constraints.txt (every package pinned to the versions the
# suite last passed with; ~5 minutes on a fresh machine). `make lock` refreshes the pins.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK_VENV := .venv-lock

.PHONY: demo test install lock clean

# The pinned install: exactly the packages in constraints.txt, no resolver (k-diffusion's
# dependency dctorch declares numpy<2, which the pins override: datasets' pyarrow needs numpy 2).
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-deps -r constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/fewstep demo --out out/demo

test: install
	# one torch thread per xdist worker: 2 workers x 2 threads on 2 cores oversubscribe and run ~4x slower
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 tests

# Refresh constraints.txt: resolve the newest versions pyproject.toml allows in a scratch venv,
# run the whole suite there, and write the pins only if it passes.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip wheel
	$(LOCK_VENV)/bin/python -m pip install --quiet -e ".[test]"
	$(LOCK_VENV)/bin/python -m pip install --quiet "numpy>=2" 2>&1 | grep -v "dctorch\|dependency resolver" || true
	OMP_NUM_THREADS=1 $(LOCK_VENV)/bin/python -m pytest -q -n 2 tests
	$(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) $(LOCK_VENV) out
