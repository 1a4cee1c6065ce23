# Two commands matter: `make reproduce` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= synthetic
JOBS ?= 2
SEEDS ?= 1

.PHONY: setup reproduce calibrate test lab clean

setup: $(STAMP)

# Re-install only when the package definition changes: a second `make setup` is instant.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[notebooks,dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Every notebook for the four tasks and the Table 2 ablations, then the results tables and figures.
reproduce: setup
	$(PY) -m mmt_lib.batch run --profile $(PROFILE) --seeds $(SEEDS) --jobs $(JOBS)
	$(PY) -m mmt_lib.batch collect --profile $(PROFILE) --seeds $(SEEDS)

# Is every synthetic target learnable, the gap to it real, and its label noise one that persists? Stage I
# pairs, upper bounds and the hard-label baseline (never an MMT row); exits with status 3 when a number is
# outside its band, the baseline's still-climbing included.
calibrate: setup
	$(PY) -m mmt_lib.calibrate --profile $(PROFILE) --jobs $(JOBS)

test: setup
	$(PY) -m pytest -n 2 --dist loadfile tests

# JupyterLab refuses to start as root unless told it may (containers, CI machines).
lab: setup
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root,) notebooks/

clean:
	rm -rf $(VENV)
