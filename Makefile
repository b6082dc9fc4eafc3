# `make train` and `make test` work on a fresh machine: they create .venv and
# install the project (with the pinned torch/torchvision from constraints.txt)
# whenever .venv is missing or older than pyproject.toml / constraints.txt.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed
ARGS   ?=
# Test workers: one per core (pytest-xdist), each taking whole files, so that a file's module
# fixtures (its reference runs) are built once. On the 2-core CPU: 6.6 min against 9.6 in one
# process. TEST_JOBS=0 runs the suite in one process.
TEST_JOBS ?= auto
# A local MNIST copy beside the checkout (as on the team's machines and in CI) is
# used instead of downloading; otherwise mnistlab's own rule applies: --data-dir,
# else $MNISTLAB_DATA, else the user's cache folder (downloaded there if missing).
ifneq ($(wildcard ../shared/data/MNIST/raw/train-images-idx3-ubyte),)
export MNISTLAB_DATA ?= $(abspath ../shared/data)
endif

.PHONY: train test install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/mnistlab train $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n $(TEST_JOBS) --dist loadfile $(ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
