# Two commands matter: `make reproduce` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= synthetic

.PHONY: setup reproduce test lab clean

setup: $(STAMP)

# Re-install only when the package definition changes: a second `make setup` is instant.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[notebooks,dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

reproduce: setup
	$(PY) -m mmt_lib.reproduce --profile $(PROFILE)

test: setup
	$(PY) -m pytest -n 2 --dist loadfile tests

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV)
