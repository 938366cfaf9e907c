#!/bin/sh
# `make test`'s pytest, in two processes at once: the container tests (tests/hosts and
# tests/compose: systemd booting, apt and dpkg inside Debian containers, mostly waiting) beside
# everything else (daemons on loopback, mostly CPU). Run one after the other they took about
# 25 minutes on 2 cores; side by side the waits of one overlap the work of the other.
#
#   scripts/run-tests.sh [PYTEST ARGS...]      (extra arguments go to both runs)
#
# The container run's output is kept in a file and printed whole once both are done, so
# neither interleaves with the other. Each run takes its own block of loopback addresses
# (CLOCKFLEET_TEST_BLOCK, tests/helpers.py). The exit status is the first failing run's.
set -u
PYTEST=${PYTEST:-.venv/bin/pytest}
CONTAINERS="tests/hosts tests/compose"
LOG=$(mktemp "${TMPDIR:-/tmp}/clockfleet-container-tests.XXXXXX")
trap 'rm -f "$LOG"' EXIT

# shellcheck disable=SC2086
CLOCKFLEET_TEST_BLOCK=1 $PYTEST -q -p no:cacheprovider $CONTAINERS "$@" >"$LOG" 2>&1 &
containers=$!

IGNORE=""
for d in $CONTAINERS; do IGNORE="$IGNORE --ignore=$d"; done
# shellcheck disable=SC2086
CLOCKFLEET_TEST_BLOCK=0 $PYTEST -q $IGNORE "$@"
rest=$?

wait "$containers"
cont=$?
echo
echo "==== the container tests ($CONTAINERS), run beside the above; exit $cont ===="
cat "$LOG"
[ "$rest" -ne 0 ] && exit "$rest"
exit "$cont"
