# ovs — the two README commands. Both create or reuse .venv and are idempotent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONSTRAINTS := requirements/constraints-ci.txt
STAMP := $(VENV)/.ovs-installed

.PHONY: install install-detectron2 install-diffusion test demo clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools<81" wheel

# Re-install only when the dependency list or the pins change.
$(STAMP): $(PY) pyproject.toml $(CONSTRAINTS)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Optional stacks, each installed by the repository's own script (CI runs them through `make test`).
D2_STAMP := $(VENV)/.ovs-detectron2
$(D2_STAMP): $(STAMP) tools/install_detectron2.sh
	bash tools/install_detectron2.sh $(PY)
	touch $(D2_STAMP)

install-detectron2: $(D2_STAMP)

DIFFUSION_STAMP := $(VENV)/.ovs-diffusion
$(DIFFUSION_STAMP): $(STAMP) tools/install_diffusion.sh
	bash tools/install_diffusion.sh $(PY)
	touch $(DIFFUSION_STAMP)

install-diffusion: $(DIFFUSION_STAMP)

test: $(STAMP) $(D2_STAMP) $(DIFFUSION_STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) tools/demo.py

clean-venv:
	rm -rf $(VENV)
