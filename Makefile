# mproc: a thin wrapper over cargo and cc.  `make help` lists the targets.

PREFIX  ?= /usr/local
DESTDIR ?=
BINDIR  ?= $(PREFIX)/bin
MANDIR  ?= $(PREFIX)/share/man
CARGO   ?= cargo
CC      ?= cc
CFLAGS  ?= -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE
LDLIBS  ?= -pthread
BUILD   ?= build

TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
MPROC   ?= $(TARGET_DIR)/release/mproc
C_SRCS  := $(wildcard c-compare/*.c)
C_PROGS := $(patsubst c-compare/%.c,$(BUILD)/c/%,$(C_SRCS))
MANPAGES := man/mproc.1 man/mproc.7
MANDOC  ?= mandoc
GROFF   ?= groff
STRACE  ?= strace

# Tools a check needs beyond Rust, cc and make: mandoc (man page lint; groff
# stands in), strace (the --trace check), man (install-check). A missing one
# is one line, and the check goes on without it; under CI (CI=true, set by
# .ci/run and by GitHub Actions) it is an error, since CI installs them all.

# Forking tests must not share a process with other test threads (a lock
# held by another thread at fork() stays locked in the child): nextest runs
# each test in its own process; without it, cargo test runs one at a time
# (as plain `cargo test` does too: RUST_TEST_THREADS in .cargo/config.toml).
HAVE_NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)
ifeq ($(HAVE_NEXTEST),yes)
RUST_TESTS = $(CARGO) nextest run --no-fail-fast --all-targets && $(CARGO) test --doc
else
RUST_TESTS = $(CARGO) test --no-fail-fast -- --test-threads=1
endif

.PHONY: all help release c demo timeline test test-rust fmt-check clippy doc man-lint install-check bench \
        compare man install uninstall clean

all: release c

help:
	@echo "make            build mproc (release) and the C reference programs"
	@echo "make demo       run the seed lessons, one after another"
	@echo "make timeline   draw the seed lessons' processes to $(BUILD)/timeline/*.svg"
	@echo "make test       fmt check, clippy, C build, all Rust tests, man page lint"
	@echo "make bench      run the benchmarks (ratios against same-run baselines)"
	@echo "make compare    the same operations in C, mproc and Python, one table"
	@echo "make man        render the man pages to $(BUILD)/man/*.txt"
	@echo "make install    install to \$$DESTDIR\$$PREFIX (default $(PREFIX))"

release:
	$(CARGO) build --release

c: $(C_PROGS)

$(BUILD)/c/%: c-compare/%.c $(wildcard c-compare/*.h)
	@mkdir -p $(BUILD)/c
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

demo: release
	@echo "== mproc square: one process prints a square"
	@$(MPROC) square
	@echo
	@echo "== mproc numbers: four processes print their numbers"
	@$(MPROC) numbers
	@echo
	@echo "== mproc cube: a pool of three cubes 1..5"
	@$(MPROC) cube
	@echo
	@echo "== mproc isolation: processes copy memory, threads share it"
	@$(MPROC) isolation

# The seed lessons with --timeline: one SVG each (their output is not kept).
TIMELINES := square numbers cube
timeline: release
	@mkdir -p $(BUILD)/timeline
	@for lesson in $(TIMELINES); do \
	    $(MPROC) --timeline $(BUILD)/timeline/$$lesson.svg $$lesson >/dev/null || exit 1; \
	    echo "$(BUILD)/timeline/$$lesson.svg"; \
	done

test: fmt-check clippy c test-rust doc man-lint install-check

fmt-check:
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

test-rust:
	@if [ "$$(uname -s)" = Linux ] && ! command -v $(STRACE) >/dev/null 2>&1; then \
	    if [ "$(CI)" = true ]; then echo "test-rust: $(STRACE) not found (CI=true: required)"; exit 1; fi; \
	    echo "test-rust: $(STRACE) not found: skipping the checks of --trace against strace"; \
	fi
	MPROC_C_DIR=$(CURDIR)/$(BUILD)/c $(RUST_TESTS)

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --document-private-items

# mandoc -Tlint when there is mandoc, else groff's warnings (groff is there
# wherever man(1) is).
man-lint:
	@if command -v $(MANDOC) >/dev/null 2>&1; then \
	    lint="$(MANDOC) -Tlint -Wwarning"; \
	elif [ "$(CI)" = true ]; then \
	    echo "man-lint: $(MANDOC) not found (CI=true: required)"; exit 1; \
	elif command -v $(GROFF) >/dev/null 2>&1; then \
	    lint="$(GROFF) -mdoc -ww -z"; \
	else \
	    echo "man-lint: skipped, neither mandoc nor groff found"; exit 0; \
	fi; \
	for page in $(MANPAGES); do \
	    out=$$($$lint $$page 2>&1); \
	    if [ -n "$$out" ]; then echo "$$out"; exit 1; fi; \
	    echo "$$lint $$page: clean"; \
	done

bench: release
	$(MPROC) bench process
	$(MPROC) bench ring
	$(MPROC) bench pool
	$(MPROC) bench run

compare: release c
	$(MPROC) bench compare --c-dir $(BUILD)/c

# groff stands in for mandoc: -P-c for overstrikes that col -b removes,
# -Wbreak for the narrow columns of mproc(7)'s tables at 80 columns.
man:
	@if command -v $(MANDOC) >/dev/null 2>&1; then render="$(MANDOC) -Tutf8"; \
	elif command -v $(GROFF) >/dev/null 2>&1; then render="$(GROFF) -Tutf8 -mdoc -P-c -Wbreak"; \
	else echo "man: neither mandoc nor groff found"; exit 1; fi; \
	mkdir -p $(BUILD)/man && \
	for page in $(MANPAGES); do \
	    $$render $$page | col -b > $(BUILD)/man/$$(basename $$page).txt || exit 1; \
	    echo "$(BUILD)/man/$$(basename $$page).txt"; \
	done

install:
	@test -x $(MPROC) || $(CARGO) build --release
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man7
	install -m 755 $(MPROC) $(DESTDIR)$(BINDIR)/mproc
	install -m 644 man/mproc.1 $(DESTDIR)$(MANDIR)/man1/mproc.1
	install -m 644 man/mproc.7 $(DESTDIR)$(MANDIR)/man7/mproc.7

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/mproc $(DESTDIR)$(MANDIR)/man1/mproc.1 $(DESTDIR)$(MANDIR)/man7/mproc.7

# Installs into a temporary prefix, reads both pages with man -M, uninstalls.
install-check:
	@if command -v man >/dev/null 2>&1; then read_man=yes; \
	elif [ "$(CI)" = true ]; then echo "install-check: man not found (CI=true: required)"; exit 1; \
	else read_man=no; echo "install-check: man not found: skipping the man -M reads"; fi; \
	tmp=$$(mktemp -d) && \
	$(MAKE) --no-print-directory install PREFIX=$$tmp MPROC=$(TARGET_DIR)/debug/mproc >/dev/null && \
	$$tmp/bin/mproc square >/dev/null && \
	{ [ $$read_man = no ] || \
	  { MANPAGER=cat man -M $$tmp/share/man 1 mproc 2>/dev/null | grep -q 'isolation' && \
	    MANPAGER=cat man -M $$tmp/share/man 7 mproc 2>/dev/null | grep -q 'zygote'; }; } && \
	$(MAKE) --no-print-directory uninstall PREFIX=$$tmp >/dev/null && \
	test ! -e $$tmp/bin/mproc && test ! -e $$tmp/share/man/man1/mproc.1 && \
	test ! -e $$tmp/share/man/man7/mproc.7 && \
	rm -rf $$tmp && \
	if [ $$read_man = yes ]; then echo "install-check: make install, man -M, make uninstall: ok"; \
	else echo "install-check: make install, make uninstall: ok"; fi

clean:
	$(CARGO) clean
	rm -rf $(BUILD)
