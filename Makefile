# wgcast: `make lab` runs the main job, `make test` passes the tests.
# Both install what is missing first (Debian, as root).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PKGS := wireguard-go wireguard-tools iproute2 nftables babeld bird2 frr systemd chromium
STAMP := $(VENV)/.installed

KERNEL_APT_PKGS := qemu-system-x86 linux-image-amd64 busybox-static nftables iproute2 wireguard-tools

.PHONY: wheel deb setup sysdeps babeld14 test lint typecheck unit lab bench fuzz clean test-kernel test-kernel-netlink kernel-deps kernel-demo

sysdeps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: sysdeps $(STAMP)

# babeld 1.14 for the interop tests and benchmarks, built from ../shared/anchors (not
# committed: build/ is ignored); the interop test builds it too when it is missing.
BABELD14 := build/babeld-1.14/babeld
babeld14: $(BABELD14)
$(BABELD14):
	@test -x /work/shared/anchors/build-babeld.sh && /work/shared/anchors/build-babeld.sh build/babeld-1.14 || echo "babeld 1.14 not built (no anchors): its interop test skips"

lint: setup
	$(BIN)/ruff check src tests bench

# Tests: one run per suite, as each has its own conftest.py imported as plain `conftest`.
typecheck: setup
	$(BIN)/mypy --strict
	MYPYPATH=src:tests/unit $(BIN)/mypy --strict --explicit-package-bases tests/unit tests/sim
	MYPYPATH=src:tests/unit:tests/netns $(BIN)/mypy --strict --explicit-package-bases tests/netns
	MYPYPATH=src:tests:tests/interop $(BIN)/mypy --strict --explicit-package-bases tests/interop
	MYPYPATH=src:tests/kernel $(BIN)/mypy --strict --explicit-package-bases tests/kernel

unit: setup
	$(BIN)/pytest -q tests/unit tests/sim

test: setup babeld14 lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider tests
	$(MAKE) test-kernel

# Debian's kernel in a software-emulated guest (virtme-ng): kernel WireGuard, netem.
kernel-deps: setup
	@missing=""; for p in $(KERNEL_APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	test -x $(BIN)/vng || $(BIN)/pip install -q virtme-ng

# The whole kernel suite: the netlink back end and the lab on kernel WireGuard with netem
# (the last stage of `make test`): 3.5 minutes on a quiet machine, 8 at a load average of
# 6-9 (docs/kernel.md). The guest is killed after 590 s (WGCAST_KERNEL_TIMEOUT).
test-kernel: kernel-deps
	$(BIN)/python tests/kernel/run.py

# `wgcast lab demo --wireguard kernel --json` in the guest (JSON on stdout).
kernel-demo: kernel-deps
	$(BIN)/python tests/kernel/run.py --timeout 1800 --cmd '.venv/bin/wgcast lab demo --wireguard kernel --json'

test-kernel-netlink: kernel-deps
	$(BIN)/python tests/kernel/run.py tests/kernel/test_netlink_kernel.py

# Packages (not part of `make test`): a wheel in dist/, a .deb in build/deb/.
DEB_APT_PKGS := debhelper dh-virtualenv python3-venv python3-dev build-essential
VERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

wheel: setup
	$(BIN)/python -m build --wheel --outdir dist .

deb:
	@missing=""; for p in $(DEB_APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	rm -rf build/deb && mkdir -p build/deb/wgcast-$(VERSION)
	git ls-files -z | xargs -0 cp --parents -t build/deb/wgcast-$(VERSION)
	cd build/deb/wgcast-$(VERSION) && dpkg-buildpackage -us -uc -b
	@ls -l build/deb/*.deb

lab: setup
	$(BIN)/wgcast lab demo

bench: setup babeld14
	$(BIN)/python bench/run_all.py

fuzz: setup
	$(BIN)/python bench/fuzz_wire.py --count 1000000

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
