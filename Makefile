# Every target installs what it needs first, so a fresh clone needs only `make demo` or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

# Keep the CDK command-line tool and jsii off the network: no version check, telemetry, notices
# or instance metadata look-ups.
export CDK_DISABLE_VERSION_CHECK := 1
export CDK_DISABLE_CLI_TELEMETRY := true
# jsii reads a comma-separated list of Node.js major versions whose end-of-life banner it skips.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export AWS_EC2_METADATA_DISABLED := true
CDK := npx --no-install cdk --no-notices

.PHONY: install demo test synth bench clean

install: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: $(PY_STAMP)
	$(PY) -m localworld.demo

test: $(PY_STAMP) $(NODE_STAMP)
	$(PY) -m pytest

synth: $(PY_STAMP) $(NODE_STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(CDK) synth --quiet

bench: $(PY_STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) node_modules cdk.out build .pytest_cache .hypothesis
