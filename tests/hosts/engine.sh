#!/bin/sh
# The container engine for tests/hosts (`make test` runs `start` before pytest, `stop` after).
#
#   start  as root: install what is missing (Debian's docker.io and debootstrap; the compose v2
#          plugin from Debian 13, bookworm has only v1), start dockerd when none answers and
#          remember its pid, build the base images (cached under .cache/images): the systemd
#          hosts of tests/hosts and the Debian 12 base of compose.local.yaml (tests/compose).
#          Not root, or the engine cannot run: say why and go on; the container tests then
#          skip with that reason (pytest -rs).
#   stop   stop the dockerd that `start` started, and only that one.
set -eu
cd "$(dirname "$0")/../.."
PIDFILE=.cache/dockerd.pid
SUITES="bullseye bookworm trixie"

engine_up() { docker info >/dev/null 2>&1; }

compose_plugin() {
    # Debian 13's docker-compose is the v2 plugin (needs only libc6 >= 2.34), fetched with a
    # private apt configuration so the system's sources stay untouched.
    docker compose version >/dev/null 2>&1 && return 0
    T=$(mktemp -d)
    mkdir -p "$T/etc" "$T/lists/partial" "$T/cache/archives/partial"
    URI=$(apt-get indextargets --format '$(REPO_URI)' | grep -v security | grep -m1 debian)
    printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$URI" >"$T/etc/trixie.sources"
    O="-o APT::Sandbox::User=root -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$T/etc"
    O="$O -o Dir::State::Lists=$T/lists -o Dir::Cache=$T/cache"
    # shellcheck disable=SC2086
    if apt-get $O update -qq && (cd "$T" && apt-get $O download -qq docker-compose) &&
        dpkg-deb -x "$T"/docker-compose_*.deb "$T/x"; then
        install -D -m 0755 "$T/x/usr/libexec/docker/cli-plugins/docker-compose" \
            /usr/local/lib/docker/cli-plugins/docker-compose
    else
        echo "tests/hosts: could not fetch the compose v2 plugin; the compose tests will skip" >&2
    fi
    rm -rf "$T"
}

start() {
    if [ "$(id -u)" -ne 0 ]; then
        engine_up || echo "tests/hosts: no Docker engine and not root: the container tests will skip" >&2
        return 0
    fi
    # lintian: tests/hosts/test_deb_contents.py checks the packages with it.
    sh scripts/ensure-debs.sh docker.io debootstrap lintian
    compose_plugin
    mkdir -p .cache
    if ! engine_up; then
        # No init system on these machines: dockerd as a child, without touching the host's
        # firewall or forwarding (containers use host networking only).
        dockerd --iptables=false --ip-forward=false --storage-driver=overlay2 \
            >.cache/dockerd.log 2>&1 &
        echo $! >"$PIDFILE"
        i=0
        until engine_up; do
            i=$((i + 1))
            if [ $i -gt 100 ] || ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
                echo "tests/hosts: dockerd did not start; the container tests will skip:" >&2
                tail -5 .cache/dockerd.log >&2
                stop
                return 0
            fi
            sleep 0.1
        done
    fi
    # The three debootstraps wait mostly on the mirror and the disk: side by side they take
    # little longer than one (a fresh checkout's only slow step; later runs only import).
    # Wait for these builds only: a bare `wait` would also wait for the dockerd started above.
    builds=""
    for suite in $SUITES; do
        (sh packaging/images/build-image.sh "$suite" .cache/images ||
            echo "tests/hosts: image $suite could not be built; its tests will fail" >&2) &
        builds="$builds $!"
    done
    # The base of compose.local.yaml's images, for tests/compose/test_compose_stack.py.
    (sh packaging/images/build-compose-base.sh .cache/images ||
        echo "tests/hosts: the compose base image could not be built; the stack test will fail" >&2) &
    builds="$builds $!"
    for pid in $builds; do
        wait "$pid" || true
    done
}

stop() {
    [ -f "$PIDFILE" ] || return 0
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 150 ]; do
            i=$((i + 1))
            sleep 0.1
        done
    fi
    rm -f "$PIDFILE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
