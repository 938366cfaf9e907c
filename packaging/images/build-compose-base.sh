#!/bin/sh
# The Debian 12 base for running compose.yaml where no registry is reachable (docs/compose.md):
# debootstrap from the mirror this machine's apt already uses, then `docker import`.
#
#   packaging/images/build-compose-base.sh [CACHE_DIR]   -> image clockfleet-compose-base:bookworm
#
# One image holds what the official images would bring: Mosquitto (its user is uid 1883, as in
# eclipse-mosquitto, since compose.yaml's setup step hands the broker its files by that uid),
# chrony, Prometheus (Debian's package), openssl, tzdata, and a Python 3.11 virtualenv on the
# PATH (/opt/python) that stands in for python:3.11-slim: `pip install` works there, and it
# already holds every dependency of `pip install '.[all]'` and the build backend, installed
# from wheels this machine downloaded (PIP_NO_INDEX and PIP_FIND_LINKS point the project
# image's own `pip install` at them, so building the images needs no package index).
# compose.local.yaml builds each service's image on it.
#
# The root file system is cached as CACHE_DIR/compose-bookworm-KEY.tar (KEY: hash of this
# script and of the requirements pyproject.toml names), so a rebuilt daemon or a fresh docker
# data root costs an import (~5 s), not a debootstrap.
set -eu
CACHE=${1:-.cache/images}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SUITE=bookworm
IMAGE=clockfleet-compose-base:$SUITE
PY=python3
[ -x "$REPO/.venv/bin/python" ] && PY=$REPO/.venv/bin/python

# Every requirement of `pip install '.[all]'` and of building the project's wheel, with
# pyproject.toml's bounds.
REQS=$("$PY" - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))
extra = p["project"]["optional-dependencies"]
# `all` names the project's own extras (clockfleet[a,b]): what each of them requires.
own = [e for r in extra["all"] for e in r.split("[", 1)[1].rstrip("]").split(",")]
reqs = p["project"]["dependencies"] + [r for e in own for r in extra[e]]
print("\n".join(reqs + p["build-system"]["requires"]))
EOF
)
KEY=$({
    cat "$HERE/build-compose-base.sh"
    echo "$REQS"
} | sha256sum | cut -c1-12)
TAR=$CACHE/compose-$SUITE-$KEY.tar

if [ "$(docker image inspect -f '{{index .Config.Labels "clockfleet.key"}}' "$IMAGE" 2>/dev/null)" = "$KEY" ]; then
    exit 0
fi

if [ ! -s "$TAR" ]; then
    mkdir -p "$CACHE"
    URI=$(apt-get indextargets --format '$(REPO_URI)' | grep -v security | grep -m1 debian)
    ROOT=$(mktemp -d "${TMPDIR:-/tmp}/cf-compose-rootfs.XXXXXX")
    trap 'rm -rf "$ROOT"' EXIT
    start=$(date +%s)
    LOG=$CACHE/compose-$SUITE-debootstrap.log
    fail() { tail -25 "$LOG" >&2; exit 1; }
    WHEELS=$ROOT/opt/clockfleet-wheels
    mkdir -p "$WHEELS"
    # Binary wheels for bookworm's CPython 3.11 (glibc 2.36), side by side with debootstrap.
    echo "$REQS" >"$WHEELS/requirements.txt"
    (
        plat=""
        for m in 36 35 34 33 32 31 30 29 28 27 26 25 24 23 22 21 20 19 18 17; do
            plat="$plat --platform manylinux_2_${m}_x86_64"
        done
        # shellcheck disable=SC2086
        "$PY" -m pip download -q --only-binary=:all: -d "$WHEELS" --python-version 3.11 \
            --implementation cp --abi cp311 --abi abi3 --abi none $plat \
            --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 \
            --platform manylinux1_x86_64 --platform any -r "$WHEELS/requirements.txt"
    ) >"$CACHE/compose-$SUITE-wheels.log" 2>&1 &
    wheels_pid=$!
    nice debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$ROOT" "$URI" >"$LOG" 2>&1 || fail
    # eclipse-mosquitto's uid, before the package's postinst would pick one.
    chroot "$ROOT" groupadd --system --gid 1883 mosquitto
    chroot "$ROOT" useradd --system --uid 1883 --gid 1883 --home-dir /var/lib/mosquitto \
        --no-create-home --shell /usr/sbin/nologin mosquitto
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    nice chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends mosquitto chrony prometheus openssl tzdata >>"$LOG" 2>&1 || fail
    rm -f "$ROOT/usr/sbin/policy-rc.d"
    rm -f "$ROOT/var/cache/apt/archives/"*.deb
    if ! wait "$wheels_pid"; then
        tail -25 "$CACHE/compose-$SUITE-wheels.log" >&2
        exit 1
    fi
    chroot "$ROOT" python3 -m venv /opt/python >>"$LOG" 2>&1 || fail
    chroot "$ROOT" /opt/python/bin/pip install -q --no-index --find-links /opt/clockfleet-wheels \
        -r /opt/clockfleet-wheels/requirements.txt >>"$LOG" 2>&1 || fail
    echo "debootstrap compose-$SUITE: $(($(date +%s) - start)) s" >>"$CACHE/timings.log"
    tar -C "$ROOT" --numeric-owner -cf "$TAR.part" .
    mv "$TAR.part" "$TAR"
    for old in "$CACHE/compose-$SUITE"-*.tar; do [ "$old" = "$TAR" ] || rm -f "$old"; done
fi
docker import \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_NO_INDEX=1' \
    --change 'ENV PIP_FIND_LINKS=/opt/clockfleet-wheels' \
    --change 'ENV PIP_DISABLE_PIP_VERSION_CHECK=1' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL clockfleet.key=$KEY" \
    "$TAR" "$IMAGE" >/dev/null
docker image prune -f --filter label=clockfleet.key >/dev/null
