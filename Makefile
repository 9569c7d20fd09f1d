# Set-up and entry points. `make run` and `make test` install into .venv first
# (torch==2.13.0 before everything else, so pip takes the CPU build and no CUDA packages).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_CONFIG ?=
SUPERNODES ?= 10
PYTEST_ARGS ?=

.PHONY: install run test bench compare-quick compose-test clean-flwr

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['dev']))" > $(VENV)/requirements.txt
	$(BIN)/python -m pip install --quiet -r $(VENV)/requirements.txt
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/python -m server_app.simulation_runner --supernodes $(SUPERNODES) --run-config "$(RUN_CONFIG)"

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks.quantum_head --json
	$(BIN)/python -m benchmarks.he_aggregation --json

compare-quick: install
	$(BIN)/python -m benchmarks.compare --quick --out results/compare-quick

# Images built and the TLS compose stack run on this host (needs Docker; as root it starts dockerd itself).
compose-test: install
	$(BIN)/python docker/compose_test.py

clean-flwr:
	rm -rf .flwr_home
