# Two commands on a fresh machine: `make serve` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test setup worker clean wheelhouse container-test soak

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[cpu,dev]'
	touch $(STAMP)

setup: $(STAMP)

serve: $(STAMP)
	$(BIN)/medimg serve

worker: $(STAMP)
	$(BIN)/medimg worker

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Air-gapped image builds: wheels resolved by the image's own Python into deploy/wheelhouse/ (needs podman and
# the base image, deploy/podman/base-image.sh), then `podman build --build-arg PIP_NO_INDEX=1 ...`.
wheelhouse:
	deploy/podman/base-image.sh
	deploy/podman/wheelhouse.sh deploy/wheelhouse

# Images built with podman and the compose stack run from them (docs/operations.md); CI runs it after `make test`.
container-test: $(STAMP)
	deploy/podman/container-test.sh

# Several hundred jobs through repeated whole-worker kills and a Redis restart, every job succeeding once.
soak: $(STAMP)
	MEDIMG_SOAK=1 $(BIN)/python -m pytest -p no:cacheprovider tests/workers/test_soak.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var
