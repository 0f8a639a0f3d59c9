# Beamline control suite. `make demo` runs the demo beamline, `make test` runs
# every test. Both install what is missing first (venv, pip packages, Debian
# packages), so they work on a fresh Debian bookworm machine as root.

PYTHON    ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
# Qt (the operator GUI): GL, GLib, fontconfig, D-Bus, and the X11 (xcb) plugin's libraries
QT_DEBS   := libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon0 \
             libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
             libxcb-render-util0 libxcb-xinerama0 libxcb-shape0 libxcb-xfixes0
# the production database (beamline db): MariaDB, Tango's DataBaseds and access control
PROD_DEBS := mariadb-server tango-db tango-accesscontrol
# a C compiler: the event relay's bind() shim (tango_devices/relay/portmap.c)
BUILD_DEBS := gcc libc6-dev
DEB_PKGS  := tango-starter tango-test $(PROD_DEBS) $(QT_DEBS) $(BUILD_DEBS)
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: install demo up down status test test-fast lint bench clean help

help:
	@echo "make demo     start the demo beamline (installs what is missing)"
	@echo "make test     run the whole test suite (installs what is missing)"
	@echo "make down     stop everything 'make demo' started"
	@echo "make status   show servers, processes and device states"
	@echo "make lint     ruff and import-linter"
	@echo "make bench    run the benchmarks in bench/ and print the figures"

install: $(STAMP)

# registry.py: the server executables (console scripts) come from it
$(STAMP): setup.py pyproject.toml tango_devices/registry.py tango_devices/relay/portmap.c
	@scripts/install-system-packages $(DEB_PKGS)
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' \
		|| { echo "error: $(PYTHON) is not Python 3.11; set PYTHON=/path/to/python3.11"; exit 1; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV) \
		|| { echo "error: could not create $(VENV); on Debian: apt-get install python3-venv"; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)
	@echo "installed: $(VENV) with the beamline suite; Debian packages: $(DEB_PKGS)"

demo: install
	$(BIN)/beamline up --demo-help

up: install
	$(BIN)/beamline up

down:
	@if [ -x $(BIN)/beamline ]; then $(BIN)/beamline down; else echo "nothing installed, nothing to stop"; fi

status: install
	$(BIN)/beamline status

# The suite runs in its own PID namespace (when the kernel allows it): the
# real Tango Starter finds servers by scanning /proc, so a test beamline must
# not see the processes of a demo beamline running on the same host, and
# everything a test started dies with the namespace.
test: install
	$(BIN)/python scripts/run-isolated $(BIN)/pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/pytest -m "not system" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

bench: install
	$(BIN)/python scripts/run-isolated $(BIN)/python -m bench

clean: down
	rm -rf $(VENV) var build *.egg-info test-output
