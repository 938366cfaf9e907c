#!/bin/sh
# Build a Debian SUITE image that boots systemd as PID 1, for testing the agent package on a
# real init: debootstrap from the mirror this machine's apt already uses, then `docker import`
# (no registry is reachable). Everything the package and the tests need is included at
# debootstrap time, so installing the package inside the container never leaves loopback.
#
#   packaging/images/build-image.sh SUITE [CACHE_DIR]   -> image clockfleet-host:SUITE
#
# (A container must be started with --stop-signal SIGRTMIN+3: `docker import` cannot set it.)
# The root file system is cached as CACHE_DIR/SUITE-KEY.tar (KEY: hash of the recipe below and
# of customize-rootfs.sh), so a rebuilt daemon or a fresh docker data root costs an import
# (~5 s), not a debootstrap (~45 s).
set -eu
SUITE=$1
CACHE=${2:-.cache/images}
HERE=$(cd "$(dirname "$0")" && pwd)
KEY=$({
    sed -n '/^# >>> recipe/,/^# <<< recipe/p' "$HERE/build-image.sh"
    cat "$HERE/customize-rootfs.sh"
} | sha256sum | cut -c1-12)
IMAGE=clockfleet-host:$SUITE
TAR=$CACHE/$SUITE-$KEY.tar

if [ "$(docker image inspect -f '{{index .Config.Labels "clockfleet.key"}}' "$IMAGE" 2>/dev/null)" = "$KEY" ]; then
    exit 0
fi

# >>> recipe: what goes into the root file system (the cache key covers this part)
case $SUITE in
    bullseye) POLKIT=policykit-1 ;;      # polkit 0.105: .pkla files, no JavaScript rules
    bookworm|trixie) POLKIT=polkitd ;;   # polkit 122/126: JavaScript .rules
    *) echo "unknown suite $SUITE (bullseye, bookworm, trixie)" >&2; exit 2 ;;
esac
# What a PBX host would have, minus its network services: systemd + D-Bus (timedatectl talks
# to timedated over the bus), polkit (decides whether the agent's user may set the zone),
# adduser (the package's postinst), chrony (the chrony backend's daemon), tzdata, procps.
# For the delivery tests (tests/hosts/test_cloud_init.py, test_ansible_role.py), off until a
# test turns them on (customize-rootfs.sh): cloud-init itself, the suite's own version (its
# `apt:` handling differs between 20.4, 22.4 and 25.1); openssh-server, what ansible-playbook
# logs in with; python3-apt, which ansible's apt module needs on the host (on a real host
# Ansible installs it from the host's own mirror, which a test host must not reach).
# debootstrap installs only the base (its own ordering cannot configure polkitd); apt inside
# the chroot installs the rest in dependency order.
BASE=systemd,systemd-sysv,dbus
EXTRA="python3 $POLKIT adduser chrony tzdata procps cloud-init openssh-server python3-apt"

if [ ! -s "$TAR" ]; then
    mkdir -p "$CACHE"
    URI=$(apt-get indextargets --format '$(REPO_URI)' | grep -v security | grep -m1 debian)
    ROOT=$(mktemp -d "${TMPDIR:-/tmp}/cf-rootfs-$SUITE.XXXXXX")
    trap 'rm -rf "$ROOT"' EXIT
    start=$(date +%s)
    LOG=$CACHE/$SUITE-debootstrap.log
    fail() { tail -25 "$LOG" >&2; exit 1; }
    nice debootstrap --variant=minbase --include="$BASE" "$SUITE" "$ROOT" "$URI" >"$LOG" 2>&1 || fail
    # No service may start inside the chroot while packages are configured.
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    # shellcheck disable=SC2086
    nice chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends $EXTRA >>"$LOG" 2>&1 || fail
    rm -f "$ROOT/usr/sbin/policy-rc.d"
    # chrony and systemd-timesyncd conflict (both are a time-daemon): keep timesyncd's .deb in
    # the image so a test can swap daemons offline, as a host that moves between them does.
    mkdir -p "$ROOT/var/cache/clockfleet-image"
    chroot "$ROOT" sh -c 'cd /var/cache/clockfleet-image && apt-get -q download systemd-timesyncd' \
        >>"$LOG" 2>&1 || fail
    sh "$HERE/customize-rootfs.sh" "$ROOT" "$SUITE"
# <<< recipe
    echo "debootstrap $SUITE: $(($(date +%s) - start)) s" >>"$CACHE/timings.log"
    tar -C "$ROOT" --numeric-owner -cf "$TAR.part" .
    mv "$TAR.part" "$TAR"
    # Older keys of this suite are dead weight.
    for old in "$CACHE/$SUITE"-*.tar; do [ "$old" = "$TAR" ] || rm -f "$old"; done
fi
docker import \
    --change 'ENV container=docker' \
    --change 'CMD ["/lib/systemd/systemd"]' \
    --change "LABEL clockfleet.key=$KEY" \
    "$TAR" "$IMAGE" >/dev/null
# The image this tag named before is now dangling: drop it (only ours, by label).
docker image prune -f --filter label=clockfleet.key >/dev/null
