# bftfs: the two commands of the README, and a few more.
#   make up      create the local cluster in nodes/ (first time), start its nodes
#   make test    the default test suite (fast tiers); make test-slow runs the slow suites
#   make down    stop the local cluster
# Every target installs what it needs first (scripts/setup.sh).

VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# make test: pytest-xdist workers, whole test files each (module-scoped clusters stay
# shared).  A serial run used about 1.1 of 2 cores (its tests wait on nodes, mounts and
# timeouts); two workers took 15.2 -> 9.1 min on 2 quiet cores.  TEST_WORKERS=0: serial.
# A test function of 8 s or more (a loaded run's durations) is marked slow: make test took
# 14.5 min before 60 such functions moved, 9.1 min after (2 491 tests).
TEST_WORKERS ?= 2

.PHONY: setup setup-tests install-helper up down status test test-slow test-all lint bench bench-setup bench-full bench-contention \
	bench-andrew bench-postmark bench-two-postmarks bench-seqio bench-opcost bench-lazy bench-space bench-history bench-transport \
	bench-scalability bench-engines bench-replace bench-generation bench-aged bench-ageing \
	bench-fio bench-fsmark bench-dbench clean

setup:
	@scripts/setup.sh

setup-tests:
	@scripts/setup.sh --tests

# mount(8) runs /sbin/mount.fuse.<type> for `mount -t fuse.bftfs` and fstab lines.
install-helper: setup
	ln -sf $(CURDIR)/$(BIN)/mount.fuse.bftfs /sbin/mount.fuse.bftfs

# make up METRICS_PORT=9250: Prometheus metrics, node I on 9250 + I, the mount on 9256
up: setup
	$(BIN)/bftfs up --dir nodes $(if $(METRICS_PORT),--metrics-port $(METRICS_PORT))

down: setup
	@if [ -f nodes/cluster.toml ]; then $(BIN)/bftfs down --dir nodes; else echo "no cluster in nodes/"; fi

status: setup
	$(BIN)/bftfs status --dir nodes

test: setup-tests
	$(BIN)/ruff check bftfs tests benchmarks
	$(BIN)/mypy
	scripts/pytest-digest.sh $(BIN)/pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

# make test-slow: two workers too (whole files each).  Serially the slow suite took 37-50
# min on 2 cores (its tests mostly wait on node processes, mounts and timeouts); on two
# workers 31.5 min on 2 quiet cores with 40 min of CPU, after its largest workloads were cut
# (34 min before; benchmarks/results/2026-11-27-slow-suite-two-workers.md).
test-slow: setup-tests
	scripts/pytest-digest.sh $(BIN)/pytest -q -m slow -n $(TEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5: no slow tests collected

test-all: setup-tests
	$(BIN)/ruff check bftfs tests benchmarks
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: setup-tests
	$(BIN)/ruff check bftfs tests benchmarks
	$(BIN)/ruff format --check bftfs tests benchmarks
	$(BIN)/mypy

# The user-facing benchmarks (issues 6, 19): Andrew, PostMark and sequential I/O of a big
# file on the local disk, bindfs, GlusterFS replica 3 (set up and torn down by the
# benchmark) and bftfs, short runs; all always run, the target fails if any did.
# BENCH_ARGS is passed to Andrew and PostMark (e.g. BENCH_ARGS=--profile), SEQIO_ARGS to
# seqio (e.g. SEQIO_ARGS="--size 50 --runs 1").
BENCH_ARGS ?=
SEQIO_ARGS ?=

bench-setup: setup
	@scripts/setup-bench.sh

bench: bench-setup
	@rc=0; \
	$(BIN)/python benchmarks/andrew.py $(BENCH_ARGS) || rc=1; \
	$(BIN)/python benchmarks/postmark.py $(BENCH_ARGS) || rc=1; \
	$(BIN)/python benchmarks/seqio.py $(SEQIO_ARGS) || rc=1; \
	exit $$rc

bench-full: bench-setup
	@rc=0; \
	$(BIN)/python benchmarks/andrew.py --full $(BENCH_ARGS) || rc=1; \
	$(BIN)/python benchmarks/postmark.py --full $(BENCH_ARGS) || rc=1; \
	$(BIN)/python benchmarks/seqio.py --runs 5 $(SEQIO_ARGS) || rc=1; \
	exit $$rc

# The side-by-side benchmarks with the living peers beside GlusterFS (issue 64): SeaweedFS,
# MooseFS and CephFS, started and stopped by the benchmark (benchmarks/seaweed.py,
# moosefs.py, cephfs.py); SeaweedFS' and MooseFS' servers do not fsync, Ceph's OSDs do.
PEER_TARGETS ?= local,bindfs,glusterfs,seaweedfs,moosefs,cephfs,bftfs
.PHONY: bench-peers
bench-peers: bench-setup
	@rc=0; \
	$(BIN)/python benchmarks/andrew.py --targets $(PEER_TARGETS) $(BENCH_ARGS) || rc=1; \
	$(BIN)/python benchmarks/postmark.py --targets $(PEER_TARGETS) $(BENCH_ARGS) || rc=1; \
	$(BIN)/python benchmarks/seqio.py --targets $(PEER_TARGETS) $(SEQIO_ARGS) || rc=1; \
	exit $$rc

# Issue 64: the whole set in one command and ONE page (benchmarks/benchall.py): Andrew,
# PostMark, seqio, fio, fs_mark, dbench and the kernel tree on the peers' targets, PostMark
# and the big-file read under each Byzantine node profile and a Byzantine client, PostMark
# at b = 1 and 2; medians of 3 -> benchmarks/results/bench-all-full.{md,svg}.  SHORT=1:
# small sizes, one run, local/bindfs/bftfs and three attacks, in ten minutes
# (bench-all-short.{md,svg}).  BENCH_ALL_ARGS, e.g. "--only postmark-attack --attack client".
SHORT ?=
BENCH_ALL_ARGS ?=
.PHONY: bench-all
bench-all: bench-setup
	$(BIN)/python benchmarks/benchall.py $(if $(SHORT),--short) $(BENCH_ALL_ARGS)

bench-andrew: bench-setup
	$(BIN)/python benchmarks/andrew.py $(BENCH_ARGS)

bench-postmark: bench-setup
	$(BIN)/python benchmarks/postmark.py $(BENCH_ARGS)

# Sequential write (with fsync) and cold read of a 200 MiB file, MB/s, on the four targets.
bench-seqio: bench-setup
	$(BIN)/python benchmarks/seqio.py $(SEQIO_ARGS)

# The standard tools (issue 64) on the same targets: fio (sequential 1 MiB, random 4 KiB read,
# random 4 KiB write + fsync; 1 and 4 jobs), fs_mark (small files + fsync; 1 and 4 threads),
# dbench (a file-server client mix; 1 and 4 clients).  TOOL_ARGS, e.g. "--full" or
# "--targets local,bftfs".
TOOL_ARGS ?=

bench-fio: bench-setup
	$(BIN)/python benchmarks/fio.py $(TOOL_ARGS)

bench-fsmark: bench-setup
	$(BIN)/python benchmarks/fsmark.py $(TOOL_ARGS)

bench-dbench: bench-setup
	$(BIN)/python benchmarks/dbench.py $(TOOL_ARGS)

# The developer workload on a real tree (issue 64): untar the kernel source (Debian's
# linux-source-6.1), find, grep -r, du, git init/add/commit, rm -rf, each timed, on the
# peers' targets; KERNELTREE_ARGS, e.g. "--subset kernel" (one top-level directory: minutes).
KERNELTREE_ARGS ?= --subset kernel
.PHONY: bench-kerneltree
bench-kerneltree: bench-setup
	$(BIN)/python benchmarks/kerneltree.py --targets $(PEER_TARGETS) $(KERNELTREE_ARGS)

# Two mounts creating and removing in one directory at once, with and without leases:
# operations per second and what the leases did (no lease ping-pong; issue 33).
bench-contention: setup
	$(BIN)/python benchmarks/contention.py $(BENCH_ARGS)

# Two real PostMark processes at once in one shared directory (two mounts each for bftfs,
# with and without leases, and GlusterFS; one directory on the local disk): tx/s (issue 33).
bench-two-postmarks: bench-setup
	$(BIN)/python benchmarks/two_postmarks.py $(BENCH_ARGS)

# Issue 62: every side-by-side benchmark with bftfs fresh and right after the ageing
# workload (3 Andrew rounds, a 1 GiB file, 3000 small files made and removed), interleaved,
# with CPU, renewals and Q/U rounds per transaction (per file, per MiB); LOAD=cpu or
# LOAD=nice-node adds each target loaded beside it (one busy process per core; one node or
# brick reniced to 19) and the ratio loaded / quiet.
LOAD ?=
AGE_MINUTES ?= 60
VARIANT_ARGS = --aged $(if $(LOAD),--load $(LOAD))

bench-aged: bench-setup
	@rc=0; \
	$(BIN)/python benchmarks/andrew.py $(VARIANT_ARGS) $(BENCH_ARGS) || rc=1; \
	$(BIN)/python benchmarks/postmark.py $(VARIANT_ARGS) $(BENCH_ARGS) || rc=1; \
	$(BIN)/python benchmarks/seqio.py $(VARIANT_ARGS) $(SEQIO_ARGS) || rc=1; \
	$(BIN)/python benchmarks/two_postmarks.py $(VARIANT_ARGS) $(BENCH_ARGS) || rc=1; \
	exit $$rc

# One cluster aged for AGE_MINUTES by rounds of that workload, PostMark 1000 / 4000 after
# each: transactions/s and CPU per transaction against age (results/ageing.{json,md,svg}).
bench-ageing: bench-setup
	$(BIN)/python benchmarks/ageing.py --minutes $(AGE_MINUTES) $(BENCH_ARGS)

# Wall time and CPU per file-system operation (create, open, stat, read, unlink) on the
# three targets: the figure to compare before and after an optimisation.
bench-opcost: bench-setup
	$(BIN)/python benchmarks/opcost.py $(BENCH_ARGS)

# Verification policies (read-time, write-time, lazy, lazy-coop) side by side on real node
# processes: writes/s with no idle time, latencies and verified-skip share with idle time.
bench-lazy: setup
	$(BIN)/python benchmarks/lazy.py $(BENCH_ARGS)

bench-space: setup
	$(BIN)/python benchmarks/space.py $(BENCH_ARGS)

bench-history: setup
	$(BIN)/python benchmarks/history.py $(BENCH_ARGS)

bench-transport: setup
	$(BIN)/python benchmarks/transport.py

# Fault scalability: per-node frames, bytes and CPU per PostMark transaction for b = 1..5.
bench-scalability: bench-setup
	$(BIN)/python benchmarks/scalability.py $(BENCH_ARGS)

# Fault scalability of both metadata engines (Q/U and FaB) for b = 1..3: per-node frames,
# bytes and CPU per operation, one mount alone and 2 and 4 in one directory (issue 39).
bench-engines: setup
	$(BIN)/python benchmarks/engines.py $(BENCH_ARGS)

# Replacing a node that holds data, online (issue 35): time, bytes moved, an Andrew run on
# a mount during it, per catch-up throttle.
bench-replace: bench-setup
	$(BIN)/python benchmarks/replace.py $(BENCH_ARGS)

# A generation move (issue 35): 6 -> 7 nodes with a tree written first, an Andrew run on a
# mount during `bftfs generation move`, per mover throttle; then finish and read back.
bench-generation: bench-setup
	$(BIN)/python benchmarks/generation_andrew.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
