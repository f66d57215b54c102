# pgdoorman developer entry points. Everything installs what it needs (Debian packages via
# scripts/ensure_deps.sh, Python packages into .venv), so each target works on a fresh Debian 12/13.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
FT_PY  := .venv-ft/bin/python
STAMP  := $(VENV)/.pgdoorman-installed

.PHONY: help venv deps drivers run test test-ft test-pg-newest lint bench bench-tls bench-deps bench-profile bench-count bench-sched soak abuse-bench ft-python deb test-deb test-pipx rootfs man clean distclean

help:
	@echo "make run        throwaway PostgreSQL + pgdoorman on 127.0.0.1:6432 in the foreground, web console on :9127"
	@echo "make test       lint, type-check, import contracts, the test suite, then the free-threaded (3.13t) concurrency tests"
	@echo "make test-pg-newest the tests that compare with PostgreSQL, against PostgreSQL 18 (PG_NEWEST=17: 17)"
	@echo "make lint       ruff, mypy and the import contracts (lint-imports) only"
	@echo "make bench      scripts/bench.py (pgdoorman vs Debian's and a current PgBouncer, charts; docs/benchmarks.md)"
	@echo "make bench-tls  the same with clients over TLS, plus 10,000 clients and a TLS + SCRAM login storm (docs/benchmarks-tls.md)"
	@echo "make bench-profile scripts/profile_workers.py: 1 vs 2 workers on 3.13t, perf and counters (docs/performance.md)"
	@echo "make bench-count scripts/count_bytecodes.py: bytecodes and calls per transaction, A/B with ARGS='--src A --src B'"
	@echo "make bench-sched scripts/sched_share.py: PgBouncer and pgdoorman at -c 100, who ran and who waited for a CPU"
	@echo "make soak       scripts/soak.py: 30 min of mixed traffic, RSS/fds/servers every minute (ARGS=--duration S)"
	@echo "make abuse-bench scripts/abuse_bench.py: RSS and canary latency under refused/half-open/stalled clients"
	@echo "make ft-python  build/reuse free-threaded CPython 3.13t and .venv-ft"
	@echo "make deb        build/pg-doorman_<version>_all.deb with dpkg-deb, checked by lintian"
	@echo "make test-deb   make deb, install it with apt/dpkg here and test it (CI; root only)"
	@echo "make test-pipx  pipx install from a clean copy of the checkout and run both commands"
	@echo "make rootfs     the container image's root filesystem from the Dockerfile with debootstrap (no engine)"
	@echo "make clean      stop the demo cluster, remove .run/ and caches (distclean: also the venvs)"

# The stamp makes `make venv` a no-op until pyproject.toml changes.
venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@echo "pip install -e '.[test]' into $(VENV) (log: $(VENV)/pip.log)"
	@{ $(VPY) -m pip install -q --upgrade pip && $(VPY) -m pip install -q -e '.[test]'; } \
		>$(VENV)/pip.log 2>&1 || { tail -n 40 $(VENV)/pip.log; exit 1; }
	touch $@

deps:
	scripts/ensure_deps.sh postgres promtool pgbouncer browser

# Toolchains and client libraries of tests/drivers/ (Node packages, Go, a JDK, Ruby, PHP, Rust crates).
drivers: venv
	scripts/install_drivers.sh

run: deps venv
	$(VPY) scripts/run_demo.py $(ARGS)

# lint-imports checks the import contracts in pyproject.toml ([tool.importlinter]).
lint: venv
	$(VPY) -m ruff check pgdoorman tests scripts
	$(VPY) -m mypy
	$(VENV)/bin/lint-imports --no-cache

# pytest runs in two pytest-xdist worker processes (CI has 2 cores; much of the suite waits on sockets,
# timeouts and pgbench rather than the CPU), each given whole test files (--dist loadfile: a module's shared
# poolers, and the driver matrix with its one-time builds, stay in one process). Each worker has its own
# PostgreSQL and its own share of the port range (tests/support/pooler.py). PYTEST_PARALLEL= runs one process.
PYTEST_PARALLEL ?= -n 2 --dist loadfile

# Every step runs even after a failure, so one CI run reports all of them; the exit code is
# non-zero if any failed.
test: deps venv drivers
	@failed=""; \
	step() { name=$$1; shift; echo "=== $$name: $$*"; "$$@" || failed="$$failed $$name"; }; \
	step ruff $(VPY) -m ruff check pgdoorman tests scripts; \
	step mypy $(VPY) -m mypy; \
	step imports $(VENV)/bin/lint-imports --no-cache; \
	step pytest $(VPY) -m pytest $(PYTEST_PARALLEL); \
	step free-threaded $(MAKE) --no-print-directory test-ft; \
	step postgres-$(PG_NEWEST) $(MAKE) --no-print-directory test-pg-newest; \
	step deb $(MAKE) --no-print-directory test-deb; \
	step pipx $(MAKE) --no-print-directory test-pipx; \
	if [ -n "$$failed" ]; then echo "=== FAILED:$$failed"; exit 1; fi; \
	echo "=== all checks passed"

# The tests that compare pgdoorman with PostgreSQL, again against the newest PostgreSQL (the suite runs on the
# machine's: 15 on Debian 12, 17 on Debian 13). scripts/fetch_postgres.py brings it (npm's relocatable builds),
# cached in /var/cache/pgdoorman; PG_NEWEST=17 for the other one it knows.
PG_NEWEST ?= 18
COMPARE_TESTS = $(addprefix tests/integration/,test_transparency.py test_setting_reports.py \
	test_startup_parameters.py test_transaction_session.py test_temp_search_path.py test_state_random.py \
	test_deferred_begin.py test_prepared_diff.py test_transparency_drivers.py test_listen_notify.py \
	test_direct_tls.py test_channel_binding.py)

test-pg-newest: deps venv drivers
	bindir=$$($(VPY) scripts/fetch_postgres.py $(PG_NEWEST)) && \
	PGDOORMAN_PG_BINDIR=$$bindir $(VPY) -m pytest $(PYTEST_PARALLEL) $(COMPARE_TESTS)

# The concurrency tests on the free-threaded build, then the driver matrix (run by .venv's pytest, where the
# drivers are) with its poolers on that build and two worker threads: tests/drivers/test_matrix_ft.py.
test-ft: deps venv drivers ft-python
	rc=0; \
	PGDOORMAN_EXPECT_FREE_THREADING=1 $(FT_PY) -m pytest -m concurrency tests/integration || rc=1; \
	PGDOORMAN_FT_PYTHON=$(abspath $(FT_PY)) $(VPY) -m pytest tests/drivers/test_matrix_ft.py || rc=1; \
	exit $$rc

ft-python:
	scripts/build_python_ft.sh

# Long-running checks of docs/robustness.md; not part of `make test`.
soak: deps venv
	$(VPY) scripts/soak.py $(ARGS)

abuse-bench: deps venv
	$(VPY) scripts/abuse_bench.py $(ARGS)

# The Debian package (docs/install.md): dpkg-deb from this checkout, man pages from the code, lintian.
deb: venv
	scripts/ensure_deps.sh deb
	PYTHON=$(VPY) scripts/build_deb.sh

man: venv
	$(VPY) scripts/gen_man.py -o build/man

# Installs the .deb on this machine (apt-get install ./build/...deb) and tests it; purged afterwards. Then installs it
# into a fresh debootstrap'd root and boots that with systemd-nspawn to drive the unit (test_deb_systemd.py).
test-deb: deps deb
	scripts/ensure_deps.sh rootfs
	PGDOORMAN_TEST_DEB=1 $(VPY) -m pytest -q tests/integration/test_deb_package.py tests/integration/test_deb_systemd.py

# `pipx install` (Debian's pipx) from a clean copy of the committed tree, into a throwaway PIPX_HOME.
test-pipx:
	scripts/ensure_deps.sh pipx
	scripts/test_pipx.sh

# The Dockerfile carried out on a debootstrap'd Debian root (docs/install.md); tests/integration/test_image_rootfs.py
# builds and runs it too. ARGS="--tar image.tar" also writes it as a tar (podman import).
rootfs:
	scripts/ensure_deps.sh rootfs
	python3 scripts/build_rootfs.py $(ARGS)

# Benchmark-only Python tools (matplotlib for the charts, py-spy): scripts/bench-requirements.txt, not the
# package's dependencies. A failed install does not stop the benchmark (it then draws no charts).
BENCH_STAMP := $(VENV)/.bench-installed
bench-deps: venv
	@test -f $(BENCH_STAMP) -a $(BENCH_STAMP) -nt scripts/bench-requirements.txt -a $(BENCH_STAMP) -nt $(STAMP) || { \
		echo "pip install -r scripts/bench-requirements.txt into $(VENV) (log: $(VENV)/pip-bench.log)"; \
		if $(VPY) -m pip install -q -r scripts/bench-requirements.txt >$(VENV)/pip-bench.log 2>&1; then touch $(BENCH_STAMP); \
		else tail -n 5 $(VENV)/pip-bench.log; echo "bench-deps: not installed; the benchmark runs without charts"; fi; }

# bench.py builds (or reuses) the current PgBouncer with scripts/build_pgbouncer.sh; if that cannot work here it
# says why and leaves that column out.
bench: venv bench-deps
	scripts/ensure_deps.sh postgres pgbouncer
	$(VPY) scripts/bench.py $(ARGS)

bench-tls: venv bench-deps
	scripts/ensure_deps.sh postgres pgbouncer
	$(VPY) scripts/bench.py --tls $(ARGS)

bench-profile: venv bench-deps ft-python
	scripts/ensure_deps.sh postgres
	$(VPY) scripts/profile_workers.py $(ARGS)

bench-count: venv bench-deps
	scripts/ensure_deps.sh postgres
	$(VPY) scripts/count_bytecodes.py $(or $(ARGS),--src .)

bench-sched: venv bench-deps
	scripts/ensure_deps.sh postgres pgbouncer
	$(VPY) scripts/sched_share.py $(ARGS)

clean:
	-test -d .run/pg && $(PYTHON) scripts/pgcluster.py stop .run/pg
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache build
	find . -name __pycache__ -type d -not -path './.venv*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .venv-ft
