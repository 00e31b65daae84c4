# natsops.fleet - the two commands users need are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BUILD  := .build
# the collection is linked into an ansible_collections tree so that ansible finds it from a checkout
COLL_LINK := $(BUILD)/collections/ansible_collections/natsops/fleet
# ansible-test needs a real directory at .../ansible_collections/natsops/fleet
SANITY_ROOT := $(BUILD)/ansible-test/ansible_collections/natsops/fleet
PYTEST_ARGS ?=

export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/$(BUILD)/collections
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: get-pip-cache venv demo test e2e e2e-cold sanity units cores lint build bench clean
.DEFAULT_GOAL := demo

venv: $(VENV)/.installed $(COLL_LINK)

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-test.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -r requirements-test.txt -e .
	$(BIN)/natsops-executor --version
	$(BIN)/python -m compileall -q plugins executor tools
	$(BIN)/nats-server --version
	touch $@

$(COLL_LINK):
	mkdir -p $(dir $(COLL_LINK))
	ln -sfn ../../../.. $(COLL_LINK)

## demo: start a loopback nats-server + executor, run playbooks/demo.yml through NATS, stop them
demo: venv
	$(BIN)/python tools/devenv.py demo

## test: everything - ansible-test units, end-to-end tests, the lab's tests, ansible-test sanity,
## the older ansible-core versions (cores), ansible-lint (tests/e2e includes the build + install into a fresh virtualenv)
test: venv units e2e e2e-cold lab-test sanity cores lint

e2e: venv
	$(BIN)/python -m pytest -q tests/e2e $(PYTEST_ARGS)

# the connection tests again with warm module runs turned off on the caller's side (e2e runs them warm, the default)
E2E_CONNECTION := tests/e2e/test_playbooks.py tests/e2e/test_connection_options.py tests/e2e/test_core_targets.py
e2e-cold: venv
	NATSOPS_E2E_WARM=false $(BIN)/python -m pytest -q $(E2E_CONNECTION) $(PYTEST_ARGS)

$(SANITY_ROOT): venv
	rm -rf $(SANITY_ROOT) && mkdir -p $(SANITY_ROOT)
	git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t $(SANITY_ROOT)
	cd $(SANITY_ROOT) && git init -q && git add -A

# ansible-test bootstraps pip in its venvs with a downloaded get-pip.py; use the offline stand-in
GET_PIP_CACHE = $(HOME)/.ansible/test/cache/get_pip_$(shell $(BIN)/python -c "from ansible_test._internal.python_requirements import get_venv_packages as g; print(g(type('P', (), {'version': '3.11'})())['pip'].replace('.', '_'))").py

get-pip-cache: venv
	install -D -m 0644 tools/get_pip_offline.py $(GET_PIP_CACHE)

sanity: $(SANITY_ROOT) get-pip-cache
	cd $(SANITY_ROOT) && $(CURDIR)/$(BIN)/ansible-test sanity --venv --python 3.11 --color no

units: $(SANITY_ROOT) get-pip-cache
	cd $(SANITY_ROOT) && $(CURDIR)/$(BIN)/ansible-test units --venv --python 3.11 --color no
	$(BIN)/python -m pytest -q tests/executor

# The older ansible-core versions meta/runtime.yml supports (2.19 is .venv's): each in its own virtualenv, made once
# under .build/cores (with the collection's requirements.txt); per version the sanity tests that depend on the core
# version, the unit tests, and tests/cores/smoke.yml through natsops.fleet.nats (tests/cores/test_smoke.py).
CORES := 2.16 2.17 2.18
CORES_DIR := $(BUILD)/cores
CORE_SANITY := --test validate-modules --test import --test compile --test ansible-doc

$(CORES_DIR)/%/.installed: requirements.txt
	test -x $(CORES_DIR)/$*/bin/python || $(PYTHON) -m venv $(CORES_DIR)/$*
	$(CORES_DIR)/$*/bin/python -m pip install --quiet "ansible-core==$*.*" -r requirements.txt
	install -D -m 0644 tools/get_pip_offline.py $(HOME)/.ansible/test/cache/get_pip_$$($(CORES_DIR)/$*/bin/python -c "from ansible_test._internal.python_requirements import get_venv_packages as g; print(g(type('P', (), {'version': '3.11'})())['pip'].replace('.', '_'))").py
	touch $@

cores: $(SANITY_ROOT) $(foreach v,$(CORES),$(CORES_DIR)/$(v)/.installed)
	set -e; for v in $(CORES); do \
	  echo "== ansible-core $$v"; \
	  (cd $(SANITY_ROOT) && $(CURDIR)/$(CORES_DIR)/$$v/bin/ansible-test sanity --venv --python 3.11 --color no $(CORE_SANITY)); \
	  (cd $(SANITY_ROOT) && $(CURDIR)/$(CORES_DIR)/$$v/bin/ansible-test units --venv --python 3.11 --color no); \
	done
	NATSOPS_CORES="$(CORES)" $(BIN)/python -m pytest -q tests/cores $(PYTEST_ARGS)

lint: venv
	$(BIN)/ansible-lint
	$(BIN)/antsibull-changelog lint
	$(BIN)/antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml

build: venv
	rm -f natsops-fleet-*.tar.gz
	$(BIN)/ansible-galaxy collection build --force .

## bench: every connection side by side (nats warm and cold, local, ssh, Mitogen local and over ssh; 1x30, 10x10,
## 20x10 through a zone executor), wall time and CPU-seconds per process by cgroup; writes docs/performance.md; CPU
## per module run cold vs warm (bench/results/warm_cpu.md). Smoke run: bench/run_bench.py --runs 1 --only ... (no docs)
bench: venv
	$(BIN)/python -m pip install --quiet mitogen || echo "mitogen not installable: its scenarios are skipped"
	$(BIN)/python bench/trust_bench.py
	$(BIN)/python bench/resilience_bench.py
	env -u PYTHONUNBUFFERED $(BIN)/python bench/warm_cpu.py
	$(BIN)/python bench/run_bench.py

clean:
	rm -rf $(BUILD) natsops-fleet-*.tar.gz tests/output

include tests/lab/lab.mk
# the lab's tests run with the project's virtualenv (pytest lives there)
lab-test: venv
lab-test: PYTHON := $(CURDIR)/$(BIN)/python
