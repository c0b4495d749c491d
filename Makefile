# fewstep: `make demo` runs the main job, `make test` runs the test suite.
# Both build .venv on first use (torch + diffusers + test extras; ~5 minutes on a fresh machine).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# k-diffusion's dependency dctorch pins numpy<2 (unneeded); datasets' pyarrow needs numpy>=2.
	$(BIN)/python -m pip install --quiet "numpy>=2,<2.4" 2>&1 | grep -v "dctorch\|dependency resolver" || true
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/fewstep demo --out out/demo

test: install
	# one torch thread per xdist worker: 2 workers x 2 threads on 2 cores oversubscribe and run ~4x slower
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 tests

clean:
	rm -rf $(VENV) out
