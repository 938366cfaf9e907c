# clockfleet: `make demo` runs the whole system on this machine; `make test` proves it.
SHELL := /bin/sh
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBS := mosquitto mosquitto-clients chrony faketime prometheus
# Tests and benchmarks: the 3-node NATS cluster (and the publisher's MQTT 3.1.1 fallback).
TEST_DEBS := nats-server
# `make apt-repo` (and the delivery tests in tests/hosts): Debian's apt-ftparchive, and gpg.
APT_REPO_DEBS := apt-utils gnupg
# Only the benchmarks: ntpdig is one of the references; scaleout runs the NATS cluster.
BENCH_DEBS := ntpsec-ntpdig nats-server
STAMP := $(VENV)/.installed-stamp

.PHONY: all setup debs test lint demo bench clean help deb apt-repo
all: help

help:
	@echo "make demo    install what is missing, run the whole system on loopback (DEMO_FOR=N: N seconds, no terminal)"
	@echo "make test    install what is missing, run ruff and the test suite against real daemons"
	@echo "make bench   measure against the references in docs/decisions.md, write BENCHMARKS.md"
	@echo "make lint    ruff, and mypy strict on the programs and the shared packages"
	@echo "make deb     the agent's .deb for Debian 11, 12 and 13 in dist/ (packaging/)"
	@echo "make apt-repo  those packages in a signed apt repository, dist/apt (docs/delivery.md)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "clockfleet needs Python >= 3.11" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(STAMP) debs

debs:
	@sh scripts/ensure-debs.sh $(DEBS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy -p clockfleet.protocol -p clockfleet.ntp -p clockfleet.agent -p clockfleet.collector -p clockfleet.publisher

test: setup lint
	@sh scripts/ensure-debs.sh $(TEST_DEBS) $(APT_REPO_DEBS)
	@sh tests/hosts/engine.sh start
	trap 'sh tests/hosts/engine.sh stop' EXIT INT TERM; PYTEST=$(VENV)/bin/pytest sh scripts/run-tests.sh

deb: $(STAMP)
	$(PY) packaging/build_deb.py --suite bullseye --suite bookworm --suite trixie --out dist

# APT_GNUPGHOME/APT_KEY: the archive key; without them, a development key (never for hosts).
apt-repo: $(STAMP)
	@sh scripts/ensure-debs.sh $(APT_REPO_DEBS)
	$(PY) packaging/apt_repo.py --build --repo dist/apt $(if $(APT_GNUPGHOME),--gnupghome $(APT_GNUPGHOME)) $(if $(APT_KEY),--key $(APT_KEY))

demo: setup
	$(PY) -m clockfleet.demo

bench: setup
	@sh scripts/ensure-debs.sh $(BENCH_DEBS)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache run
